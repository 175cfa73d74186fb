"""`create_app(settings)`: the Starlette application, its routes table, lifespan and errors.

Every endpoint is a raw ASGI callable (no Request or Response objects, no BaseHTTPMiddleware):
Starlette routes, the endpoints stream. Three pure-ASGI layers run before the router: the access
line (outermost), the raw-path gate (SPEC section 11, proxy/web/gate.py), and the table's cached
routes matched first (proxy/web/cached.py: the hit path skips the router's frames).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.convertors import register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from config import Settings, load_settings
from config.masking import masked_url
from proxy.cache import errors
from proxy.core.model import RouteKind
from proxy.core.scope import ScopeHasher
from proxy.ops import logs
from proxy.ops.metrics import Metrics
from proxy.web.access import AccessLogged
from proxy.web.cached import CachedRoutesFirst, CachedRunRead, RunIdConvertor
from proxy.web.components import (
    Live,
    close_components,
    open_components,
    store_description,
)
from proxy.web.forwarding import Forward
from proxy.web.gate import RequestGate
from proxy.web.own import AdminSurface, Health, MetricsPage, OpenApiDocument, Readiness

log = logging.getLogger("proxy")
READS = ["GET", "HEAD"]
register_url_convertor("run_id", RunIdConvertor())


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app; settings default to the environment (PROXY_* and .env)."""
    settings = settings if settings is not None else load_settings()
    live = Live()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    hasher, generated_secret = _scope_hasher(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # a failure here reaches uvicorn, which logs it with its traceback and stops
        live.parts = await open_components(settings, metrics, hasher)
        _log_ready(settings, generated_secret)
        try:
            yield
        finally:
            parts, live.parts = live.parts, None
            if parts is not None:
                await close_components(parts)

    table = routes(settings, live, registry)
    app = Starlette(
        routes=table,
        middleware=[
            Middleware(AccessLogged),
            Middleware(RequestGate, admin_token=settings.admin_token.get_secret_value(), live=live),
            Middleware(CachedRoutesFirst, table=table),
        ],
        exception_handlers={HTTPException: _router_answer, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # a path is forwarded as sent, never redirected
    return app


def routes(settings: Settings, live: Live, registry: CollectorRegistry) -> list[BaseRoute]:
    """Every endpoint of the proxy, the hit path first. Paths are matched as the client sent
    them (proxy/web/gate.py); own paths take every method (a 405, never a passthrough)."""
    table: list[BaseRoute] = [
        Route("/v1/runs/{run_id:run_id}", CachedRunRead(RouteKind.RUN, live), methods=READS),
        Route(
            "/v1/runs/{run_id:run_id}/related",
            CachedRunRead(RouteKind.RELATED, live),
            methods=READS,
        ),
        Route("/healthz", Health(), methods=None),
        Route("/readyz", Readiness(live), methods=None),
        Route("/metrics", MetricsPage(registry), methods=None),
        Route("/openapi.json", OpenApiDocument(), methods=None),
        Mount("/admin", AdminSurface(live)),
    ]
    if settings.passthrough:  # off: what is not cached is a 404, a cached path's write a 405
        table.append(Mount("", Forward(live, settings.max_request_bytes)))
    return table


async def _router_answer(request: Request, exc: Exception) -> Response:
    """The router's own answers (no route: 404; a cached path's other methods: 405), in the
    proxy's JSON (while it starts or stops, the gate has answered 503 before routing)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = ", ".join(m for m in READS if m in (exc.headers or {}).get("Allow", ""))
        return _json(errors.method_not_allowed(allowed.encode()))
    return _json(errors.not_found())


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises the exception once this answer is sent: uvicorn logs it
    return _json(errors.internal_error())


def _json(failure: errors.ProxyErrorReply) -> Response:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in failure.headers}
    return Response(
        failure.body(), failure.status, headers, media_type=errors.JSON_TYPE.decode("latin-1")
    )


def _scope_hasher(settings: Settings) -> tuple[ScopeHasher, bool]:
    secret = settings.scope_secret.get_secret_value()
    return ScopeHasher((secret or secrets.token_urlsafe(32)).encode()), not secret


def _log_ready(settings: Settings, generated_secret: bool) -> None:
    if generated_secret:
        log.warning(
            "PROXY_SCOPE_SECRET is not set: using a random one, so cached entries survive "
            "neither a restart nor sharing between replicas"
        )
    log.info(
        "lunary-cache-proxy ready",
        extra={"upstream": masked_url(settings.upstream_url), "store": store_description(settings)},
    )


def app_from_environment() -> Starlette:
    """uvicorn's factory for workers (`proxy.web.app:app_from_environment`, factory=True): each
    worker process builds its app from the environment, and configures its own logs."""
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    return create_app(settings)
