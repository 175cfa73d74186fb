"""The Upstream port on stock httpx (httpcore's transport), as the proxy had it before aiohttp:
kept to measure against.

benchmarks/upstream_clients.py drives it beside the aiohttp baseline
(benchmarks/aiohttp_upstream.py) and the proxy's adapter (proxy.upstream.LunaryUpstream: httpx on
an aiohttp transport); the proxy itself no longer uses it (the README says why, with the figures).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from urllib.parse import urlsplit

import httpx

from proxy.cache.ports import (
    FetchedResponse,
    StreamedResponse,
    UpstreamRequest,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.core.headers import Header, end_to_end
from proxy.upstream.client import RESPONSE_DROP  # every adapter relays the same headers


class HttpxUpstream:
    """Talks to the Lunary API at `base_url`, forwarding the client's raw path and query."""

    def __init__(
        self,
        base_url: str,
        timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base = httpx.URL(base_url)
        self._timeout = timeout
        self._prefix = urlsplit(base_url).path.rstrip("/").encode("ascii")
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            # a small keep-alive pool: httpcore scans it on every operation
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=min(max_connections, 32),
            ),
            follow_redirects=False,
            transport=transport,
        )

    async def fetch(self, request: UpstreamRequest, max_body: int) -> FetchedResponse:
        """Bounded as a whole by the upstream timeout: a trickling body cannot hold a fill open."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._fetch(request, max_body)
        except TimeoutError as exc:
            raise UpstreamTimeout("total timeout") from exc

    async def _fetch(self, request: UpstreamRequest, max_body: int) -> FetchedResponse:
        started = time.perf_counter()
        response = await self._send(request)
        chunks = _mapped(response.aiter_raw())
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > max_body:
                    return FetchedResponse(
                        status=response.status_code,
                        headers=_response_headers(response),
                        body=b"".join(parts),
                        complete=False,
                        rest=_closing(chunks, response),
                        elapsed=time.perf_counter() - started,
                    )
        except BaseException:
            await response.aclose()
            raise
        await response.aclose()
        return FetchedResponse(
            status=response.status_code,
            headers=_response_headers(response),
            body=b"".join(parts),
            elapsed=time.perf_counter() - started,
        )

    async def stream(self, request: UpstreamRequest) -> StreamedResponse:
        response = await self._send(request)
        return StreamedResponse(
            status=response.status_code,
            headers=_response_headers(response),
            chunks=_mapped(response.aiter_raw()),
            closer=response.aclose,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _send(self, request: UpstreamRequest) -> httpx.Response:
        target = self._prefix + request.raw_path
        if request.query_string:
            target += b"?" + request.query_string
        outgoing = self._client.build_request(
            request.method,
            self._base,
            headers=list(request.headers),
            content=request.body,
            # httpcore sends this request-target verbatim: httpx would re-quote some characters
            extensions={"target": target},
        )
        try:
            return await self._client.send(outgoing, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise UpstreamUnreachable(type(exc).__name__) from exc


def _response_headers(response: httpx.Response) -> list[Header]:
    return end_to_end(
        ((name.lower(), value) for name, value in response.headers.raw), RESPONSE_DROP
    )


async def _mapped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(type(exc).__name__) from exc
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise UpstreamUnreachable(type(exc).__name__) from exc


async def _closing(
    chunks: AsyncIterator[bytes], response: httpx.Response
) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await response.aclose()
