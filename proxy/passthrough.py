"""Everything that is not a cached read: streamed both ways to the same path and query upstream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from proxy.headers import Header, end_to_end, first_forwarded_address, forwarded_for
from proxy.metrics import Metrics
from proxy.ports import (
    StreamedResponse,
    Upstream,
    UpstreamError,
    UpstreamRequest,
)
from proxy.ratelimit import Cooldowns, RateLimited

# Host is the upstream's; the X-Forwarded-For chain is rebuilt with the client's address; the
# body is streamed up as it arrives, so `Expect: 100-continue` is not relayed.
PASS_DROP = frozenset({b"host", b"x-forwarded-for", b"expect"})


class RequestTooLarge(Exception):
    """The request body exceeds PROXY_MAX_REQUEST_BYTES."""


class Passthrough:
    """Forwards one request upstream unchanged but for hop-by-hop headers and X-Forwarded-For."""

    def __init__(
        self, upstream: Upstream, max_request_bytes: int, metrics: Metrics, cooldowns: Cooldowns
    ) -> None:
        self._upstream = upstream
        self._max_request_bytes = max_request_bytes
        self._metrics = metrics
        self._cooldowns = cooldowns

    def declared_too_large(self, headers: list[Header]) -> bool:
        """True when Content-Length alone shows the body is over the limit (answer 413 at once)."""
        for name, value in headers:
            if name == b"content-length":
                return value.strip().isdigit() and int(value) > self._max_request_bytes
        return False

    async def forward(
        self,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        headers: list[Header],
        client_host: str | None,
        body: AsyncIterator[bytes] | None,
    ) -> StreamedResponse:
        outgoing = end_to_end(headers, PASS_DROP)
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
            response = await self._upstream.stream(
                UpstreamRequest(method, raw_path, query_string, outgoing, body)
            )
        except Exception as exc:
            # a body cut short (too large, client gone) is counted too, as "aborted"
            label = exc.label if isinstance(exc, UpstreamError) else "aborted"
            self._metrics.upstream("passthrough", label, time.perf_counter() - started)
            raise
        self._metrics.upstream("passthrough", response.status, time.perf_counter() - started)
        if await self._cooldowns.learn(response.status, response.headers, bucket, now):
            self._metrics.cooldown_started()
        return response

    def limited(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return _limited(chunks, self._max_request_bytes)


async def _limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise RequestTooLarge
        yield chunk
