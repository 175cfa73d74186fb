"""The Upstream port on aiohttp: pooled connections, timeouts, streaming, and error mapping.

aiohttp costs a fraction of httpx's CPU per upstream request (benchmarks/upstream_clients.py),
which on the miss path is the proxy's whole budget. aiohttp never leaks past this module: its
exceptions become UpstreamError subclasses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.headers import Header, end_to_end
from proxy.ports import (
    FetchedResponse,
    StreamedResponse,
    UpstreamRequest,
    UpstreamTimeout,
    UpstreamUnreachable,
)

# uvicorn writes its own Date and the proxy its own X-Request-ID: relaying would send two
RESPONSE_DROP = frozenset({b"date", b"x-request-id"})
# What aiohttp would add on its own: the request goes out with the client's headers only.
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
CHUNK = 64 * 1024
MAX_UPSTREAM_FIELD_BYTES = 16 * 1024


class AiohttpUpstream:
    """Talks to the Lunary API at `base_url`, forwarding the client's raw path and query."""

    def __init__(self, base_url: str, timeout: float, max_connections: int) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # made on first use, inside the running loop (aiohttp binds a session to its loop)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, limit_per_host=0, ttl_dns_cache=60
                ),
                # connect and each read are bounded; fills add a total bound of their own
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self._timeout, sock_read=self._timeout
                ),
                auto_decompress=False,  # bodies are relayed as the upstream encoded them
                skip_auto_headers=NO_AUTO_HEADERS,
                cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookie to another
                requote_redirect_url=False,
                trust_env=True,  # HTTPS_PROXY / NO_PROXY / SSL_CERT_FILE, as httpx honoured them
                # as much header as h11 (httpx) accepted: a long upstream header is not a 502
                max_line_size=MAX_UPSTREAM_FIELD_BYTES,
                max_field_size=MAX_UPSTREAM_FIELD_BYTES,
            )
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
        # back out unchanged (latin-1 would double-encode anything above 0x7f); the app refuses
        # values that are not UTF-8 before they get here (headers.not_utf8)
        headers = CIMultiDict(
            (name.decode("latin-1"), value.decode("utf-8")) for name, value in request.headers
        )
        upload = _Upload(asyncio.current_task())
        body = None if request.body is None else _uploading(request.body, self._timeout, upload)
        try:
            response = await self._client().request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except asyncio.CancelledError:
            # the upload watchdog cancelled this request (and nobody else did): a timeout
            task = upload.task
            if upload.stalled and task is not None and task.uncancel() == 0:
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


@dataclass(slots=True)
class _Upload:
    """A request body on its way up, for the watchdog to stop when the upstream stops reading."""

    task: asyncio.Task[Any] | None  # the task waiting for the answer
    response: aiohttp.ClientResponse | None = None  # the answer, once it came
    stalled: bool = False
    # what the client's body raised (too large, client gone): aiohttp reports it as a
    # connection error, and the caller must answer it for what it is
    failure: Exception | None = None


async def _uploading(
    chunks: AsyncIterator[bytes], stall_after: float, upload: _Upload
) -> AsyncIterator[bytes]:
    """Pass the client's body on, keeping what it raised, with a write timeout per chunk.

    aiohttp has no write timeout (httpx had): an upstream that stops reading would hold the
    request, and a pooled connection, for ever. The clock runs only while aiohttp writes a
    chunk, never while the client is slow to send the next one.
    """
    loop = asyncio.get_running_loop()
    try:
        async for chunk in chunks:
            watchdog = loop.call_later(stall_after, _stalled, upload)
            try:
                yield chunk
            finally:
                watchdog.cancel()
    except Exception as exc:
        upload.failure = exc
        raise


def _stalled(upload: _Upload) -> None:
    upload.stalled = True
    if upload.response is not None:
        upload.response.close()  # the answer is being relayed: cut the connection under it
    elif upload.task is not None:
        upload.task.cancel()  # still waiting for the answer: stop waiting


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
