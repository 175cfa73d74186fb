"""The proxy's own endpoints: health, readiness, metrics, its OpenAPI document, and the admin
surface. Never forwarded, whatever the method."""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy.cache import errors
from proxy.cache.ports import StoreError
from proxy.web.access import access_of
from proxy.web.asgi import Receive, Scope, Send, send_error, send_whole
from proxy.web.components import Live
from proxy.web.openapi import DOCUMENT_BYTES

READ_METHODS = frozenset({"GET", "HEAD"})
JSON = (b"content-type", errors.JSON_TYPE)
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class OwnRead:
    """A GET or HEAD the proxy answers itself; any other method is a 405, never a passthrough
    (so its route takes every method)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access_of(scope).route = "own"
        method = scope["method"]
        if method not in READ_METHODS:
            await send_error(send, errors.method_not_allowed(b"GET, HEAD"))
            return
        status, headers, body = await self.answer()
        await send_whole(send, status, headers, body, head=method == "HEAD")

    async def answer(self) -> Answer:
        raise NotImplementedError


class Health(OwnRead):
    async def answer(self) -> Answer:
        return 200, [JSON], b'{"status":"ok"}'


class Readiness(OwnRead):
    """Ready once started, and while the store answers a ping."""

    def __init__(self, live: Live) -> None:
        self._live = live

    async def answer(self) -> Answer:
        parts = self._live.parts
        if parts is None:
            failure = errors.not_started()
            return failure.status, [JSON], failure.body()
        try:
            await parts.store.ping()
        except StoreError as exc:  # its cause was filled in by the guard (store/guard.py)
            failure = errors.not_ready(
                f"the store does not answer: {exc.cause} ({exc.detail or exc})", exc.cause
            )
            return failure.status, [JSON], failure.body()
        return 200, [JSON], orjson.dumps({"status": "ready"})


class MetricsPage(OwnRead):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    async def answer(self) -> Answer:
        content_type = (b"content-type", CONTENT_TYPE_LATEST.encode())
        return 200, [content_type], generate_latest(self._registry)


class OpenApiDocument(OwnRead):
    async def answer(self) -> Answer:
        return 200, [JSON], DOCUMENT_BYTES


class AdminSurface:
    """Every spelling of `/admin...` (and of `/openapi.json` but the exact one: proxy/web/gate.py);
    the admin answers only the exact purge path, and is off (404) without a token."""

    def __init__(self, live: Live) -> None:
        self._live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access_of(scope).route = "own"
        parts = self._live.parts
        if parts is None:  # starting or stopping: no admin to ask
            await send_error(send, errors.not_found())
            return
        answer = await parts.admin.handle(scope["method"], scope["raw_path"], scope["headers"])
        if isinstance(answer, errors.ProxyErrorReply):
            await send_error(send, answer)
            return
        await send_whole(send, 200, [JSON], answer)
