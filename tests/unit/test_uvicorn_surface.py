"""The part of uvicorn's private HttpToolsProtocol that proxy/web/server.py builds on.

GuardedHttpProtocol overrides uvicorn's methods and reads its attributes. uvicorn does not promise
any of them: a release that renames one would not break the proxy at import but silently (an
override never called, a deadline never armed). Each name here fails by name when it moves, so a
new uvicorn release outside pyproject's window is checked before it is allowed in.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from importlib.metadata import requires, version
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.web import server
from proxy.web.server import GuardedHttpProtocol
from tests.unit.test_server_protocol import connected

SERVER_SOURCE = Path(server.__file__)

# what GuardedHttpProtocol reads from uvicorn's protocol, and from the objects it holds
PROTOCOL_ATTRIBUTES = ("loop", "transport", "flow", "cycle", "parser", "headers")
CYCLE_ATTRIBUTES = ("response_complete", "waiting_for_100_continue", "keep_alive")


# uvicorn's private methods we replace without calling super(): they must still exist there,
# else ours is never called
PRIVATE_OVERRIDES = {"_unsupported_upgrade_warning"}


def defined_methods() -> set[str]:
    return {
        name
        for name, value in vars(GuardedHttpProtocol).items()
        if inspect.isfunction(value) and name != "__init__"
    }


def overridden_methods() -> list[str]:
    """Public methods we define are uvicorn's (protocol callbacks), and the listed private ones."""
    return sorted(name for name in defined_methods() if not name.startswith("_")) + sorted(
        PRIVATE_OVERRIDES
    )


def test_the_installed_uvicorn_is_inside_the_declared_window() -> None:
    """This file checks the uvicorn installed; pyproject's window must hold it (a run on a
    uvicorn outside it would check a release the project does not declare)."""
    (declared,) = [
        r for r in map(Requirement, requires("lunary-cache-proxy") or []) if r.name == "uvicorn"
    ]
    assert declared.specifier.contains(version("uvicorn")), (version("uvicorn"), declared)


def test_every_override_exists_in_uvicorn_with_our_parameters() -> None:
    methods = overridden_methods()
    assert {"data_received", "on_header", "send_400_response", "pause_writing"} <= set(methods)
    for name in methods:
        theirs = getattr(HttpToolsProtocol, name, None)
        assert theirs is not None, f"uvicorn's HttpToolsProtocol has no {name}: ours is dead"
        ours_params = list(inspect.signature(getattr(GuardedHttpProtocol, name)).parameters)
        their_params = list(inspect.signature(theirs).parameters)
        assert ours_params == their_params, f"{name}: uvicorn takes {their_params}"


def test_our_helpers_shadow_nothing_of_uvicorns() -> None:
    """A private helper of ours with a name uvicorn also uses would replace its method silently."""
    helpers = {name for name in defined_methods() if name.startswith("_")} - PRIVATE_OVERRIDES
    shadowed = {name for name in helpers if hasattr(HttpToolsProtocol, name)}
    assert not shadowed, f"helpers that override uvicorn's methods unawares: {shadowed}"


def test_the_module_reads_no_uvicorn_attribute_this_test_does_not_know() -> None:
    """Every `self.<name>` the module reads is ours (set in __init__) or listed here: a new read
    of uvicorn's state must be added to the lists above, and so checked."""
    tree = ast.parse(SERVER_SOURCE.read_text())
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "GuardedHttpProtocol"
    )
    read = {
        node.attr
        for node in ast.walk(guarded)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }
    assigned = {
        target.attr
        for node in ast.walk(guarded)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute)
    }
    ours = assigned | defined_methods() | set(dir(asyncio.Protocol))
    unknown = read - ours - set(PROTOCOL_ATTRIBUTES)
    assert not unknown, f"server.py reads uvicorn attributes this test does not check: {unknown}"


async def test_a_connected_protocol_has_every_attribute_we_read() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    protocol, _transport = await connected(app)
    for name in PROTOCOL_ATTRIBUTES:
        assert hasattr(protocol, name), f"uvicorn's protocol has no {name}"
    assert hasattr(protocol.flow, "read_paused")
    assert callable(protocol.parser.should_upgrade)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    cycle = protocol.cycle
    assert cycle is not None, "uvicorn no longer keeps the request cycle as .cycle"
    for name in CYCLE_ATTRIBUTES:
        assert hasattr(cycle, name), f"uvicorn's RequestResponseCycle has no {name}"
    await asyncio.sleep(0.01)  # let the app answer, so the cycle completes
    assert cycle.response_complete
