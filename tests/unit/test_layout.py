"""The layout rule "no function over ~60 lines in proxy/": each step should read in one screen."""

from __future__ import annotations

import ast
from pathlib import Path

PROXY = Path(__file__).resolve().parents[2] / "proxy"
MAX_FUNCTION_LINES = 60


def long_functions(source: str, filename: str) -> list[str]:
    """`file:line name (n lines)` for every function or method over MAX_FUNCTION_LINES, nested
    ones included; a function's lines run from its `def` to its last line (decorators aside)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            end = node.end_lineno if node.end_lineno is not None else node.lineno
            lines = end - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{filename}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_proxy_is_over_sixty_lines() -> None:
    modules = sorted(PROXY.rglob("*.py"))
    assert modules, f"no modules found under {PROXY}"
    too_long = [
        finding
        for module in modules
        for finding in long_functions(
            module.read_text(encoding="utf-8"), str(module.relative_to(PROXY.parent))
        )
    ]
    assert not too_long, "split these into steps that read in one screen:\n" + "\n".join(too_long)


def _function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}() -> None:\n{body}"


def test_the_check_names_every_long_function_and_method() -> None:
    source = (
        _function("fits", MAX_FUNCTION_LINES - 1)
        + _function("too_long", MAX_FUNCTION_LINES)
        + "class Driver:\n"
        + _function("long_method", MAX_FUNCTION_LINES + 5, indent="    ").replace(
            "def ", "async def ", 1
        )
    )
    assert long_functions(source, "sample.py") == [
        f"sample.py:{MAX_FUNCTION_LINES + 1} too_long ({MAX_FUNCTION_LINES + 1} lines)",
        f"sample.py:{2 * MAX_FUNCTION_LINES + 3} long_method ({MAX_FUNCTION_LINES + 6} lines)",
    ]
