"""Everything that is not a cached read: streamed both ways to the same path and query upstream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from proxy.cache.cooldowns import Cooldowns, RateLimited
from proxy.cache.ports import (
    StreamedResponse,
    Upstream,
    UpstreamError,
    UpstreamRequest,
)
from proxy.core.headers import Header, end_to_end, first_forwarded_address, forwarded_for
from proxy.ops.metrics import Metrics
from proxy.web.buffering import BodyBuffer, RequestBody

# Host is the upstream's; the X-Forwarded-For chain is rebuilt with the client's address; the
# body is read whole before it goes up (the client had its `100 Continue` then), so `Expect` is
# not relayed, and it goes up with its own length, never chunked as the client may have sent it.
PASS_DROP = frozenset({b"host", b"x-forwarded-for", b"expect"})
# with a body: its framing too, replaced by its own Content-Length
BODY_DROP = PASS_DROP | {b"content-length", b"transfer-encoding"}


class Passthrough:
    """Forwards one request upstream unchanged but for hop-by-hop headers and X-Forwarded-For."""

    def __init__(
        self, upstream: Upstream, bodies: BodyBuffer, metrics: Metrics, cooldowns: Cooldowns
    ) -> None:
        self._upstream = upstream
        self._bodies = bodies
        self._metrics = metrics
        self._cooldowns = cooldowns

    def declared_too_large(self, headers: list[Header]) -> bool:
        """True when Content-Length alone shows the body is over the limit (answer 413 at once)."""
        for name, value in headers:
            if name == b"content-length":
                return value.strip().isdigit() and int(value) > self._bodies.max_bytes
        return False

    async def buffered(self, chunks: AsyncIterator[bytes]) -> RequestBody:
        """The whole body, read before any upstream connection is taken (web/buffering.py)."""
        return await self._bodies.read(chunks)

    async def forward(
        self,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        headers: list[Header],
        client_host: str | None,
        body: RequestBody | None,
    ) -> StreamedResponse:
        outgoing = end_to_end(headers, PASS_DROP if body is None else BODY_DROP)
        if body is not None:
            outgoing.append((b"content-length", b"%d" % body.size))
        chain = forwarded_for([v for n, v in headers if n == b"x-forwarded-for"], client_host)
        if chain is not None:
            outgoing.append((b"x-forwarded-for", chain))
        bucket, now = first_forwarded_address(chain), time.time()
        try:
            await self._cooldowns.check(bucket, now)
        except RateLimited:
            self._metrics.cooldown_rejection()
            raise
        started = time.perf_counter()
        try:
            chunks = None if body is None else body.chunks()
            response = await self._upstream.stream(
                UpstreamRequest(method, raw_path, query_string, outgoing, chunks)
            )
        except Exception as exc:
            # anything else that stopped the request (the spool file failing) is "aborted"
            failed = exc if isinstance(exc, UpstreamError) else None
            label, cause = ("aborted", None) if failed is None else (failed.label, failed.cause)
            self._metrics.upstream("passthrough", label, time.perf_counter() - started, cause)
            raise
        self._metrics.upstream("passthrough", response.status, time.perf_counter() - started)
        if await self._cooldowns.learn(response.status, response.headers, bucket, now):
            self._metrics.cooldown_started()
        return response
