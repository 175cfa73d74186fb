"""The Upstream port on aiohttp: pooled connections, timeouts, streaming, and error mapping.

aiohttp costs a fraction of httpx's CPU per upstream request (benchmarks/upstream_clients.py),
which on the miss path is the proxy's whole budget. aiohttp never leaks past this module: its
exceptions become UpstreamError subclasses.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.streams import StreamReader
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

# uvicorn writes its own Date and the proxy its own X-Request-ID: relaying would send two
RESPONSE_DROP = frozenset({b"date", b"x-request-id"})
# What aiohttp would add on its own: the request goes out with the client's headers only.
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
CHUNK = 64 * 1024
MAX_UPSTREAM_FIELD_BYTES = 16 * 1024

log = logging.getLogger("proxy.upstream.client")


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
                connector=_Connector(
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


class _AnswersOnly(ResponseHandler):
    """aiohttp's connection protocol, closing a connection that receives what nobody asked for.

    HTTP/1.1 pairs a response with a request by order alone. aiohttp parses whatever an idle
    pooled connection receives and queues it for the next request sent there: one response too
    many from the upstream would answer that request (another credential's) with it, and every
    later one on the connection with the answer to the one before, cached under its scope.
    A request is outstanding from set_response_params (aiohttp calls it once per request, as it
    sends it) until the body of its final (non-1xx) answer has ended. After that, a byte, or a
    second answer parsed from the bytes that ended the first, closes the connection unread.
    (Before its first request a connection keeps aiohttp's own handling: a proxy may answer
    CONNECT before aiohttp calls set_response_params, and aiohttp keeps those bytes for it.)
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._awaiting = False  # a request was sent and its final answer has not come
        self._answer: StreamReader | None = None  # the body of the last request's answer

    def _idle(self) -> bool:
        return not self._awaiting and self._answer is not None and self._answer.is_eof()

    def set_response_params(self, **params: Any) -> None:
        self._awaiting, self._answer = True, None
        super().set_response_params(**params)

    def data_received(self, data: bytes) -> None:
        # (b"" is aiohttp resuming its own parser; an upgraded connection is no longer HTTP)
        if data and self._idle() and not self._upgraded:
            self._unsolicited()
            return
        super().data_received(data)

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        if not self._awaiting:  # a second answer, parsed from the bytes that ended the first
            self._unsolicited()
            return
        code = data[0].code
        if not 100 <= code < 200 or code == 101:  # final: other 1xx are interim, it follows
            self._awaiting, self._answer = False, data[1]
        super().feed_data(data, size)

    def is_connected(self) -> bool:
        """aiohttp asks this of a pooled connection before reusing it: one holding input that
        was never read (so never asked for) is not reused."""
        return super().is_connected() and not (self._buffer or self._tail)

    def _unsolicited(self) -> None:
        log.warning("the upstream sent what no request asked for: connection closed")
        self._should_close = True
        self.close()


class _Connector(aiohttp.TCPConnector):
    """aiohttp's TCP connector, its connections on _AnswersOnly.

    aiohttp has no public hook for the protocol: this sets the factory it builds them with,
    and fails at start-up rather than run unguarded should a new aiohttp rename it.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if "_factory" not in vars(self):
            raise RuntimeError("aiohttp's connector no longer has a protocol factory to set")
        self._factory = functools.partial(_answers_only, loop=asyncio.get_running_loop())


def _answers_only(loop: asyncio.AbstractEventLoop) -> ResponseHandler:
    return _AnswersOnly(loop)


def _response_headers(response: aiohttp.ClientResponse) -> list[Header]:
    raw = response.raw_headers
    return end_to_end(((name.lower(), value) for name, value in raw), RESPONSE_DROP)


@dataclass(slots=True)
class _Upload:
    """A request body on its way up, for the watchdog to stop when the upstream stops reading."""

    task: asyncio.Task[Any] | None  # the task waiting for the answer
    response: aiohttp.ClientResponse | None = None  # the answer, once it came
    stalled: bool = False
    # what reading the body raised (a buffered body's spool file failing): aiohttp reports it
    # as a connection error, and the caller must answer it for what it is
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
