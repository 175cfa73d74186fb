"""The passthrough endpoint: every request the proxy does not cache goes to Lunary as sent,
and a write Lunary accepted drops the cached runs it changed before the client hears back."""

from __future__ import annotations

from proxy.cache import errors
from proxy.cache.cooldowns import RateLimited
from proxy.cache.ports import UpstreamError
from proxy.core.paths import match_run_write, writes_unnamed_runs
from proxy.ingest.forms import ingest_form, is_ingest
from proxy.ingest.reader import Unreadable
from proxy.web.access import access_of
from proxy.web.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    client_host,
    has_body,
    relay,
    request_body,
    send_error,
)
from proxy.web.buffering import RequestBody, RequestTooLarge, SpoolUnavailable
from proxy.web.components import Components, Live

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# the request spool budget is spent (or the disk refused): a moment later it may not be
BUFFER_FULL = errors.ProxyErrorReply(
    503,
    "request_buffer_full",
    "Too many request bodies are being buffered at once; try again shortly.",
    ((b"retry-after", b"1"),),
)


class Forward:
    """A raw ASGI endpoint: the body is read whole first (a slow upload holds its own socket and
    buffer, never an upstream connection), then the request and the answer are streamed."""

    def __init__(self, live: Live, max_request_bytes: int) -> None:
        self._live = live
        self._max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = self._live.parts
        if parts is None:
            await send_error(send, errors.not_started())
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if parts.passthrough.declared_too_large(headers):
            await send_error(send, errors.request_too_large(self._max_request_bytes))
            return
        try:
            body = (
                await parts.passthrough.buffered(request_body(receive))
                if has_body(headers)
                else None
            )
        except RequestTooLarge:
            await send_error(send, errors.request_too_large(self._max_request_bytes))
            return
        except SpoolUnavailable:
            await send_error(send, BUFFER_FULL)
            return
        except ClientGone:
            return
        try:
            await _forward(parts, scope, send, body)
        finally:
            if body is not None:
                body.close()


async def _forward(parts: Components, scope: Scope, send: Send, body: RequestBody | None) -> None:
    method: str = scope["method"]
    raw_path: bytes = scope["raw_path"]
    try:
        response = await parts.passthrough.forward(
            method,
            raw_path,
            scope.get("query_string", b""),
            scope["headers"],
            client_host(scope),
            body,
        )
    except RateLimited as limited:
        await send_error(send, errors.rate_limited(limited.remaining))
        return
    except UpstreamError as exc:
        access_of(scope).cause = exc.cause  # (its log line and metric are the client's, fill's)
        await send_error(send, errors.upstream_failure(exc))
        return
    access_of(scope).upstream_status = response.status
    if 200 <= response.status < 300:
        # before the client hears back, so a read right after its write sees the write
        await _invalidate(parts, method, raw_path, scope["headers"], body)
    await relay(send, response.status, response.headers, b"", response.chunks, response.aclose)


async def _invalidate(
    parts: Components,
    method: str,
    raw_path: bytes,
    headers: list[tuple[bytes, bytes]],
    body: RequestBody | None,
) -> None:
    """Drop the runs a request the upstream accepted wrote: its path's, or its events'
    (or, when its events cannot be read, cut entries stored before it)."""
    invalidator = parts.invalidator
    if method in WRITE_METHODS:
        written_run = match_run_write(raw_path)
        if written_run is not None:
            await invalidator.run(written_run, "write")
        elif writes_unnamed_runs(method, raw_path):
            await invalidator.cut("unnamed_runs", parts.reads.scope_of(headers))
            return
    if body is not None and method == "POST" and is_ingest(raw_path):
        writer = parts.reads.scope_of(headers)
        form = ingest_form(raw_path, headers)
        if isinstance(form, Unreadable):
            await invalidator.unreadable(form, writer)
            return
        async with body.reading() as events:
            await invalidator.ingest(form, events, writer)
