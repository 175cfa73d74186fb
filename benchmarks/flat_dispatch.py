"""The proxy's dispatch before the Starlette routes table (issue 15), kept as the baseline that
benchmarks/dispatch.py measures proxy/web/app.py against. Never run it in front of clients.

One ASGI callable picks the endpoint with an if-chain on the raw path, as proxy/web/app.py did
up to 564b9ab. Everything else is today's: the same pure-ASGI layers (access line, raw-path
gate), endpoints, components and uvicorn protocol, so the two differ only by the router.

    PROXY_PORT=18600 python -m benchmarks.flat_dispatch
"""

from __future__ import annotations

import secrets

import uvicorn
from prometheus_client import CollectorRegistry

from config import Settings, load_settings
from proxy.__main__ import server_options
from proxy.cache import errors
from proxy.core.model import RouteKind
from proxy.core.paths import is_own_surface, match_cached_route
from proxy.core.scope import ScopeHasher
from proxy.ops import logs
from proxy.ops.metrics import Metrics
from proxy.web.access import AccessLogged
from proxy.web.asgi import ASGIApp, Receive, Scope, Send, send_error
from proxy.web.cached import CachedRunRead
from proxy.web.components import Live, close_components, open_components
from proxy.web.forwarding import Forward
from proxy.web.gate import RequestGate
from proxy.web.own import AdminSurface, Health, MetricsPage, OpenApiDocument, Readiness

READ_METHODS = frozenset({"GET", "HEAD"})


class FlatDispatch:
    """The proxy as one ASGI callable, no router: lifespan by hand, an if-chain per request."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._live = Live()
        registry = CollectorRegistry()
        self._metrics = Metrics(registry)
        secret = settings.scope_secret.get_secret_value() or secrets.token_urlsafe(32)
        self._hasher = ScopeHasher(secret.encode())
        self._own: dict[bytes, ASGIApp] = {
            b"/healthz": Health(),
            b"/readyz": Readiness(self._live),
            b"/metrics": MetricsPage(registry),
            b"/openapi.json": OpenApiDocument(),
        }
        self._admin = AdminSurface(self._live)
        self._reads = {kind: CachedRunRead(kind, self._live) for kind in RouteKind}
        self._forward = Forward(self._live, settings.max_request_bytes)
        admin_token = settings.admin_token.get_secret_value()
        self._layers = AccessLogged(RequestGate(self._dispatch, admin_token, self._live))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self._layers(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._live.parts = await open_components(
                    self._settings, self._metrics, self._hasher
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                parts, self._live.parts = self._live.parts, None
                if parts is not None:
                    await close_components(parts)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope["raw_path"]  # the gate set it
        own = self._own.get(raw_path)
        if own is not None:
            await own(scope, receive, send)
            return
        if is_own_surface(raw_path):
            await self._admin(scope, receive, send)
            return
        route = match_cached_route(raw_path)
        if route is not None and scope["method"] in READ_METHODS:
            scope["path_params"] = {"run_id": route.run_id}
            await self._reads[route.kind](scope, receive, send)
        elif self._settings.passthrough:
            await self._forward(scope, receive, send)
        elif route is None:
            await send_error(send, errors.not_found())
        else:
            await send_error(send, errors.method_not_allowed(b"GET, HEAD"))


def main() -> None:
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    uvicorn.run(
        FlatDispatch(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        **server_options(settings),
    )


if __name__ == "__main__":
    main()
