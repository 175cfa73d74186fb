"""The Upstream port on httpx: Lunary through an `httpx.AsyncClient` whose transport is the
proxy's aiohttp session (transport.py): pooled connections, timeouts, streaming both ways, and
the error mapping. httpx never leaks past this module: its exceptions become UpstreamError
subclasses.

On httpx's own transport (httpcore) a request cost 3 to 9 times raw aiohttp's CPU; on the
aiohttp transport httpx adds about half of raw aiohttp's (benchmarks/upstream_clients.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import httpx

from proxy.cache.ports import (
    FetchedResponse,
    StreamedResponse,
    UpstreamError,
    UpstreamRequest,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.core.causes import UpstreamCause
from proxy.core.headers import Header, end_to_end
from proxy.ops.ratelimit_log import RateLimitedLog
from proxy.upstream.failures import Exchange, Failure
from proxy.upstream.session import EnvProxy, open_session
from proxy.upstream.transport import EXCHANGE, SessionTransport

# uvicorn writes its own Date and the proxy its own X-Request-ID: relaying would send two
RESPONSE_DROP = frozenset({b"date", b"x-request-id"})

# httpx logs every request at INFO (the proxy's default level): the access line already says
# what went upstream, and a line per miss would cost the miss path what it saves
logging.getLogger("httpx").setLevel(logging.WARNING)
log = logging.getLogger("proxy.upstream")
# a failure's cause is logged at most once per this many seconds, the next line counting the rest
FAILURE_LOG_INTERVAL = 10.0
CLOSED = Failure(UpstreamCause.CLOSED, "the upstream client is closed: the proxy is stopping")
# fetch fills the cache; stream relays a passthrough request
Purpose = Literal["fill", "passthrough"]


class LunaryUpstream:
    """Talks to the Lunary API at `base_url`, forwarding the client's raw path and query."""

    def __init__(
        self,
        base_url: str,
        timeout: float,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls` verifies the upstream's certificate (tls.py; None: the system's trust)."""
        self._base = httpx.URL(base_url)
        self._prefix = urlsplit(base_url).path.rstrip("/").encode("ascii")
        self._timeout = timeout
        # connect, read, write (per chunk of the body) and the wait for a pooled connection
        self._timeouts = httpx.Timeout(timeout).as_dict()
        # each request brings its own aiohttp timeouts, from self._timeouts
        session = functools.partial(open_session, max_connections, aiohttp.ClientTimeout(), tls)
        self._client = _Client(
            transport=SessionTransport(session, EnvProxy.for_upstream(base_url)),
            follow_redirects=False,
            trust_env=False,  # httpx would route proxied URLs round the transport (EnvProxy)
        )

    async def fetch(self, request: UpstreamRequest, max_body: int) -> FetchedResponse:
        """Bounded as a whole by the upstream timeout: a trickling body cannot hold a fill open.
        When that deadline cuts the request short, its cause is the phase it cut (failures.py)."""
        exchange = Exchange()
        try:
            async with asyncio.timeout(self._timeout):
                return await self._fetch(request, max_body, exchange)
        except TimeoutError as exc:
            raise self._failed("fill", exchange.timed_out(self._timeout)) from exc

    async def _fetch(
        self, request: UpstreamRequest, max_body: int, exchange: Exchange
    ) -> FetchedResponse:
        started = time.perf_counter()
        response = await self._send(request, exchange, "fill")
        parts: list[bytes] = []
        size = 0
        rest: _Rest | None = None  # past max_body: the unread remainder, for the caller
        try:
            chunks = _mapped(response.aiter_raw(), exchange, self._failed_as("fill"))
            async for chunk in chunks:
                parts.append(chunk)
                size += len(chunk)
                if size > max_body:
                    rest = _Rest(chunks, response)
                    break
        except BaseException:
            await response.aclose()
            raise
        if rest is None:
            await response.aclose()
        return FetchedResponse(
            status=response.status_code,
            headers=_response_headers(response),
            body=b"".join(parts),
            complete=rest is None,
            rest=rest,
            elapsed=time.perf_counter() - started,
        )

    async def stream(self, request: UpstreamRequest) -> StreamedResponse:
        exchange = Exchange()
        response = await self._send(request, exchange, "passthrough")
        return StreamedResponse(
            status=response.status_code,
            headers=_response_headers(response),
            chunks=_mapped(response.aiter_raw(), exchange, self._failed_as("passthrough")),
            closer=response.aclose,
        )

    async def close(self) -> None:
        await self._client.aclose()
        self._failure_log.flush("upstream requests failed (lines held back, counted)")

    @functools.cached_property
    def _failure_log(self) -> RateLimitedLog:
        """One line per cause per interval: an outage fails every request the same way."""
        return RateLimitedLog(log, FAILURE_LOG_INTERVAL)

    def _failed(self, purpose: Purpose, failure: Failure) -> UpstreamError:
        """The UpstreamError a failure is (a timeout: 504, else 502), logged by its cause."""
        host = f"{self._base.host}:{self._base.port or _DEFAULT_PORTS.get(self._base.scheme, '')}"
        self._failure_log.warning(
            failure.cause,
            f"upstream request failed: {failure.cause} ({failure.detail})",
            {"cause": failure.cause.value, "error": failure.detail, "upstream": host,
             "purpose": purpose},
        )  # fmt: skip
        kind = UpstreamTimeout if failure.timeout else UpstreamUnreachable
        return kind(failure.detail, failure.cause)

    def _failed_as(self, purpose: Purpose) -> Callable[[Failure], UpstreamError]:
        return functools.partial(self._failed, purpose)

    async def _send(
        self, request: UpstreamRequest, exchange: Exchange, purpose: Purpose
    ) -> httpx.Response:
        target = self._prefix + request.raw_path
        if request.query_string:
            target += b"?" + request.query_string
        # built here, not by the client's build_request: there are no client-wide headers,
        # cookies or parameters to merge in, so the timeouts are all it would add
        outgoing = httpx.Request(
            request.method,
            self._base,
            headers=list(request.headers),
            content=request.body,
            # the request-target, sent as the client wrote it (httpx would re-quote some of it)
            extensions={"target": target, "timeout": self._timeouts, EXCHANGE: exchange},
        )
        if self._client.is_closed:  # shutting down: a request that outlived the grace period
            raise self._failed(purpose, CLOSED)
        try:
            return await self._client.send(outgoing, stream=True)
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise self._failed(purpose, _failure(exc, exchange)) from exc


class _Client(httpx.AsyncClient):
    """httpx's client, keeping no cookies: the upstream's Set-Cookie is relayed to its client,
    and httpx's own jar would send it on every later request, whichever client's it is.

    (A jar that refuses every cookie would do too, but httpx still builds urllib's request
    and response views of every answer for it: a tenth of the client's CPU per request.)
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        """httpx's __init__ sets the client's cookies: there are none to keep."""


class _NoCookies(httpx.Cookies):
    """Empty, and staying so."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return


def _response_headers(response: httpx.Response) -> list[Header]:
    return end_to_end(
        ((name.lower(), value) for name, value in response.headers.raw), RESPONSE_DROP
    )


async def _mapped(
    chunks: AsyncIterator[bytes], exchange: Exchange, failed: Callable[[Failure], UpstreamError]
) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise failed(_failure(exc, exchange)) from exc


def _failure(exc: httpx.TransportError | httpx.StreamError, exchange: Exchange) -> Failure:
    """What the transport noted on the exchange; else (an error of httpx's own) its name."""
    if exchange.failure is not None:
        return exchange.failure
    if isinstance(exc, httpx.TimeoutException):
        return exchange.timed_out()
    return Failure(UpstreamCause.OTHER, type(exc).__name__)


_DEFAULT_PORTS = {"http": 80, "https": 443}


class _Rest(AsyncGenerator[bytes, None]):
    """The unread rest of a body: closing it releases the connection, even if never read.

    (An async generator's `finally` runs only once the generator has started.)
    """

    def __init__(self, chunks: AsyncIterator[bytes], response: httpx.Response) -> None:
        self._chunks = chunks
        self._response = response

    async def asend(self, value: None) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            await self._response.aclose()
            raise

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> bytes:
        await self._response.aclose()
        raise typ if val is None else val

    async def aclose(self) -> None:
        await self._response.aclose()
