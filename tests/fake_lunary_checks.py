"""The request-body checks Lunary makes with zod on the run writes, and the 422 message
zod-validation-error makes of what fails (`Validation error: Required at "value"`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Json = Any
Issues = list[str]
Check = Callable[[Json, str], Issues]
MISSING: Any = object()  # a member the body does not have: zod's undefined


def message(issues: Issues) -> str:
    return "Validation error: " + "; ".join(issues)


def _at(text: str, path: str) -> str:
    return f'{text} at "{path}"' if path else text


def _kind(value: Json) -> str:
    """zod's name for what it received."""
    if value is MISSING:
        return "undefined"
    if value is None:
        return "null"
    for python, name in ((bool, "boolean"), (int | float, "number"), (str, "string")):
        if isinstance(value, python):
            return name
    return "array" if isinstance(value, list) else "object"


def of_type(expected: str) -> Check:
    def check(value: Json, path: str) -> Issues:
        got = _kind(value)
        if got == expected:
            return []
        return [
            _at("Required" if got == "undefined" else f"Expected {expected}, received {got}", path)
        ]

    return check


def union(*options: Check) -> Check:
    """z.union: passes if one option passes, else every option's issues, joined by "or"."""

    def check(value: Json, path: str) -> Issues:
        failures = [option(value, path) for option in options]
        if not all(failures):
            return []
        texts: list[str] = []
        for issues in failures:
            if "; ".join(issues) not in texts:
                texts.append("; ".join(issues))
        return [" or ".join(texts)]

    return check


def optional(inner: Check) -> Check:
    """`.nullable().optional()`: absent or null passes."""
    return lambda value, path: [] if value is MISSING or value is None else inner(value, path)


def array_of(item: Check) -> Check:
    def check(value: Json, path: str) -> Issues:
        if not isinstance(value, list):
            return of_type("array")(value, path)
        return [issue for i, element in enumerate(value) for issue in item(element, f"{path}[{i}]")]

    return check


def enum(*values: str) -> Check:
    expected = " | ".join(f"'{v}'" for v in values)

    def check(value: Json, path: str) -> Issues:
        if value in values:
            return []
        if value is MISSING:
            return [_at("Required", path)]
        if not isinstance(value, str):
            return [_at(f"Expected {expected}, received {_kind(value)}", path)]
        return [_at(f"Invalid enum value. Expected {expected}, received '{value}'", path)]

    return check


def obj(**members: Check) -> Check:
    """z.object: an object whose named members pass (others are stripped, not refused)."""

    def check(value: Json, path: str) -> Issues:
        if not isinstance(value, dict):
            return of_type("object")(value, path)
        return [
            issue
            for name, member in members.items()
            for issue in member(value.get(name, MISSING), f"{path}.{name}" if path else name)
        ]

    return check


STRING, NUMBER, BOOLEAN, NULL = (of_type(t) for t in ("string", "number", "boolean", "null"))
SCORE = obj(label=STRING, value=union(NUMBER, STRING, BOOLEAN), comment=optional(STRING))
FEEDBACK = union(obj(thumb=optional(enum("up", "down")), comment=optional(STRING)), NULL)
TAGS = obj(tags=union(array_of(STRING), NULL))
VISIBILITY = obj(visibility=BOOLEAN)
