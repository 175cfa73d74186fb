"""The two cached run routes' endpoint, and the run id convertor their paths are matched with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from starlette.convertors import Convertor
from starlette.routing import BaseRoute, Match, Route

from proxy.cache import errors
from proxy.cache.reads import ReadRequest
from proxy.core.model import CachedRoute, RouteKind
from proxy.core.paths import unquote_segment
from proxy.core.runs import canonical_run_id
from proxy.web.access import access_of
from proxy.web.asgi import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    client_host,
    relay,
    send_error,
    send_whole,
)
from proxy.web.components import Live

# A Postgres UUID spelling (proxy/core/runs.py) as it may stand in a raw path: every character
# literal or percent-encoded once. Exactly the segments canonical_run_id(unquote_segment(...))
# reads as a run id (tests/unit/test_routes.py), so the router sends nothing else here.
_HEX = r"(?:[0-9a-fA-F]|%3[0-9]|%4[1-6]|%6[1-6])"
_HYPHEN = r"(?:-|%2[dD])"
_DIGITS = rf"{_HEX}{{4}}(?:{_HYPHEN}?{_HEX}{{4}}){{7}}"
RUN_ID_SPELLING = rf"(?:(?:\{{|%7[bB]){_DIGITS}(?:\}}|%7[dD])|{_DIGITS})"


class RunIdConvertor(Convertor[str]):
    """`{run_id:run_id}`: a UUID spelling Lunary accepts, converted to its canonical form."""

    regex: ClassVar[str] = RUN_ID_SPELLING

    def convert(self, value: str) -> str:
        run_id = canonical_run_id(unquote_segment(value.encode("latin-1")))
        if run_id is None:  # the regex admits only what canonical_run_id reads
            raise ValueError(f"not a run id: {value!r}")
        return run_id

    def to_string(self, value: str) -> str:
        return value


class CachedRunRead:
    """GET or HEAD on `/v1/runs/{id}` or `/v1/runs/{id}/related`: a raw ASGI endpoint (no
    Request or Response objects on the hit path), answered by the read driver."""

    def __init__(self, kind: RouteKind, live: Live) -> None:
        self.kind = kind
        self._live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = self._live.parts
        if parts is None:
            await send_error(send, errors.not_started())
            return
        route = CachedRoute(self.kind, scope["path_params"]["run_id"])
        method: str = scope["method"]
        access = access_of(scope)
        access.route = self.kind.value
        reply = await parts.reads.serve(
            ReadRequest(
                route=route,
                method=method,
                raw_path=scope["raw_path"],
                query_string=scope.get("query_string", b""),
                headers=scope["headers"],
                client_host=client_host(scope),
            )
        )
        access.cache, access.upstream_status = reply.cache, reply.upstream_status
        access.cause = reply.cause
        if reply.rest is None:
            await send_whole(send, reply.status, reply.headers, reply.body, head=method == "HEAD")
        else:
            rest = reply.rest
            await relay(send, reply.status, reply.headers, reply.body, rest, rest.aclose)


class CachedRoutesFirst:
    """Pure ASGI, the innermost of the proxy's layers: the routes table's cached run routes are
    matched here, before Starlette's exception middleware and router, so a hit skips their
    frames (the Request object the exception middleware builds for every request, the router's
    walk): with them, a hit cost 8-12 % more CPU than the pre-Starlette dispatch; without, it is
    within the 5 % budget (README, Performance: `benchmarks.dispatch`). Everything else, a cached
    path's other methods included (a partial match), goes on to the router. Errors still reach
    Starlette's handlers: this layer runs inside them."""

    def __init__(self, app: ASGIApp, table: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = [
            route
            for route in table
            if isinstance(route, Route) and isinstance(route.endpoint, CachedRunRead)
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self._routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:  # a method the route takes: handle() would only call
                    scope.update(child_scope)
                    await route.app(scope, receive, send)
                    return
        await self.app(scope, receive, send)
