"""The Upstream port on aiohttp alone, as the proxy had it before httpx-aiohttp: kept as the
baseline the proxy's adapter (proxy.upstream.LunaryUpstream, httpx on the same aiohttp session)
is measured against.

benchmarks/upstream_clients.py drives it beside the proxy's adapter and stock httpx;
benchmarks/aiohttp_proxy.py serves the whole proxy on it for benchmarks/misspath.py. It shares
the session (issue 8's guarded connections) and the write timeout with the proxy's adapter, so
the two differ only by the httpx layer.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.cache.ports import (
    FetchedResponse,
    StreamedResponse,
    UpstreamRequest,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.core.headers import Header, end_to_end
from proxy.upstream.client import RESPONSE_DROP  # every adapter relays the same headers
from proxy.upstream.session import EnvProxy, open_session
from proxy.upstream.upload import Upload, uploading

CHUNK = 64 * 1024


class AiohttpUpstream:
    """Talks to the Lunary API at `base_url`, forwarding the client's raw path and query."""

    def __init__(
        self,
        base_url: str,
        timeout: float,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """The same arguments as LunaryUpstream, which this stands in for."""
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._max_connections = max_connections
        self._tls = tls
        self._proxy = EnvProxy.for_upstream(base_url)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # made on first use, inside the running loop (aiohttp binds a session to its loop)
        if self._session is None:
            # connect and each read are bounded; fills add a total bound of their own
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self._timeout, sock_read=self._timeout
            )
            self._session = open_session(self._max_connections, timeout, self._tls)
        return self._session

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
        parts: list[bytes] = []
        size = 0
        rest: _Rest | None = None  # past max_body: the unread remainder, for the caller
        try:
            chunks = _mapped(response.content.iter_chunked(CHUNK))
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > max_body:
                    rest = _Rest(chunks, response)
                    break
        except BaseException:
            response.close()
            raise
        if rest is None:
            response.release()
        return FetchedResponse(
            status=response.status,
            headers=_response_headers(response),
            body=b"".join(parts),
            complete=rest is None,
            rest=rest,
            elapsed=time.perf_counter() - started,
        )

    async def stream(self, request: UpstreamRequest) -> StreamedResponse:
        response = await self._send(request)

        async def closer() -> None:
            response.close()

        return StreamedResponse(
            status=response.status,
            headers=_response_headers(response),
            chunks=_mapped(response.content.iter_chunked(CHUNK)),
            closer=closer,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, request: UpstreamRequest) -> aiohttp.ClientResponse:
        target = request.raw_path.decode("latin-1")
        if request.query_string:
            target += "?" + request.query_string.decode("latin-1")
        # encoded=True: yarl sends the request-target as the client wrote it, never re-quoted
        url = URL(self._base + target, encoded=True)
        # aiohttp writes header values as UTF-8: decoding them as UTF-8 sends the client's bytes
        # back out unchanged (the app refuses values that are not UTF-8 before they get here)
        headers = CIMultiDict(
            (name.decode("latin-1"), value.decode("utf-8")) for name, value in request.headers
        )
        upload = Upload(asyncio.current_task(), self._timeout)
        body = None if request.body is None else uploading(request.body, upload)
        try:
            response = await self._client().request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
                proxy=self._proxy.url,
            )
        except asyncio.CancelledError:
            if upload.cancelled_by_stall():  # the write timeout, and nobody else, cancelled
                raise UpstreamTimeout("the upstream stopped reading the request body") from None
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if upload.failure is not None:
                raise upload.failure from exc
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(type(exc).__name__) from exc
            raise UpstreamUnreachable(type(exc).__name__) from exc
        upload.response = response  # the body may still be going up while the answer comes
        return response


def _response_headers(response: aiohttp.ClientResponse) -> list[Header]:
    raw = response.raw_headers
    return end_to_end(((name.lower(), value) for name, value in raw), RESPONSE_DROP)


async def _mapped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except TimeoutError as exc:
        raise UpstreamTimeout(type(exc).__name__) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnreachable(type(exc).__name__) from exc


class _Rest(AsyncGenerator[bytes, None]):
    """The unread rest of a body: closing it releases the connection, even if never read.

    (An async generator's `finally` runs only once the generator has started.)
    """

    def __init__(self, chunks: AsyncIterator[bytes], response: aiohttp.ClientResponse) -> None:
        self._chunks = chunks
        self._response = response

    async def asend(self, value: None) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            self._response.close()
            raise

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> bytes:
        self._response.close()
        raise typ if val is None else val

    async def aclose(self) -> None:
        self._response.close()
