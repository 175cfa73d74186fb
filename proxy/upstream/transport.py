"""httpx-aiohttp's transport on the proxy's own aiohttp session, sending exactly the request
httpx built: its request-target verbatim, every header line, a write timeout, and aiohttp's
errors raised as the httpx errors they are.

The stock `AiohttpTransport.handle_async_request` cannot carry a proxy's request: it sends
`str(request.url)`, which httpx has quoted (`{` becomes `%7B`) and yarl quotes again (`%61`
becomes `a`); it hands aiohttp a mapping of headers, which joins repeated lines; and it maps a
refused connection, a failed DNS lookup and a connection closed before the answer all to
`httpx.ConnectTimeout` (an upstream that is down would be answered 504, not 502). This class
keeps the rest of it (the session it is given, made on first use; closing it), and notes why a
request failed on its Exchange (failures.py), for the client to report.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from multidict import CIMultiDict
from yarl import URL

from proxy.core.causes import UpstreamCause
from proxy.upstream.failures import Exchange, Failure, Phase, failure_of, phase_trace
from proxy.upstream.session import EnvProxy
from proxy.upstream.upload import Upload, uploading

CHUNK = 64 * 1024
# handed to the stock constructor so that it builds no context of its own; never used
_UNUSED_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
# the request extension carrying its Exchange (made here when the caller brings none)
EXCHANGE = "lcp.exchange"
STALLED = Failure(
    UpstreamCause.WRITE_TIMEOUT, "the upstream stopped reading the request body", timeout=True
)


class SessionTransport(AiohttpTransport):
    """Sends httpx requests through `session()` (called once, inside the running loop).

    Honours the `target` request extension as httpcore does (the request-target, sent as is)
    and every httpx timeout: connect, read, pool, and write, which aiohttp lacks (upload.py).
    A failure is noted on the request's Exchange (the `lcp.exchange` extension) before the
    httpx error is raised.
    """

    def __init__(self, session: Callable[[], aiohttp.ClientSession], proxy: EnvProxy) -> None:
        # TLS is the session's (proxy/upstream/tls.py: the system's CAs and PROXY_UPSTREAM_CA_FILE).
        # The stock transport would build an httpx context it never uses: reading the CA
        # bundle for nothing, and failing start-up on a bad SSL_CERT_FILE.
        super().__init__(verify=_UNUSED_TLS, trust_env=False, client=session)
        self._proxy = proxy

    def _session(self) -> aiohttp.ClientSession:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
            # the session is made elsewhere (session.py); its trace list is public and read
            # per request: the phases are what name a timeout (failures.py)
            self.client.trace_configs.append(phase_trace())
        return self.client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        exchange: Exchange = request.extensions.get(EXCHANGE) or Exchange()
        upload = Upload(asyncio.current_task(), timeout.get("write"))
        try:
            response = await self._session().request(
                request.method,
                _url(request),
                headers=_headers(request),
                data=_body(request, upload),
                allow_redirects=False,
                compress=None,
                timeout=aiohttp.ClientTimeout(
                    # aiohttp's `connect` spans waiting for a pooled connection and making one
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
                proxy=self._proxy.url,
                trace_request_ctx=exchange,
            )
        except asyncio.CancelledError:
            if upload.cancelled_by_stall():
                exchange.failure = STALLED
                raise httpx.WriteTimeout(STALLED.detail) from None
            raise
        except (aiohttp.ClientError, OSError) as exc:  # (TimeoutError is an OSError)
            raise _failure(exc, upload, exchange) from exc
        upload.response = response  # the body may still be going up while the answer comes
        exchange.phase = Phase.BODY
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, upload, exchange),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": _reason(response)},
        )


class _Body(httpx.AsyncByteStream):
    """An answer's body as it arrives, a chunk at a time: aiohttp reads no further ahead than
    its buffer, so a slow reader holds the upstream back (back-pressure)."""

    def __init__(
        self, response: aiohttp.ClientResponse, upload: Upload, exchange: Exchange
    ) -> None:
        self._response = response
        self._upload = upload
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise _failure(exc, self._upload, self._exchange) from exc

    async def aclose(self) -> None:
        # a body read to its end has already given its connection back to the pool; one that
        # was not is cut, since what is left of it would be read as the next answer
        self._response.close()


def _url(request: httpx.Request) -> URL:
    url = request.url
    target: bytes = request.extensions.get("target", url.raw_path)
    origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
    # encoded=True: yarl sends the request-target as the client wrote it, never re-quoted
    return URL(origin + target.decode("latin-1"), encoded=True)


def _headers(request: httpx.Request) -> CIMultiDict[str]:
    # aiohttp writes header values as UTF-8: decoding them as UTF-8 sends the client's bytes back
    # out unchanged (latin-1 would double-encode anything above 0x7f); the app refuses values
    # that are not UTF-8 before they get here (headers.not_utf8). httpx marks a streamed body
    # of no declared length chunked: aiohttp does the chunking, and says so itself.
    return CIMultiDict(
        (name.decode("latin-1"), value.decode("utf-8"))
        for name, value in request.headers.raw
        if name.lower() != b"transfer-encoding"
    )


def _body(request: httpx.Request, upload: Upload) -> bytes | AsyncIterator[bytes] | None:
    if isinstance(request.stream, httpx.ByteStream):  # given whole (or no body at all)
        return request.content or None
    if not isinstance(request.stream, httpx.AsyncByteStream):
        raise TypeError("an async transport needs an async request body")
    return uploading(request.stream, upload)


def _reason(response: aiohttp.ClientResponse) -> bytes:
    return (response.reason or "").encode("latin-1", "replace")


def _failure(exc: aiohttp.ClientError | OSError, upload: Upload, exchange: Exchange) -> Exception:
    """What the caller is told: the body's own failure, or the httpx error the failure is (the
    write timeout among them), noted on the exchange."""
    if upload.failure is not None:
        return upload.failure
    failure = STALLED if upload.stalled else failure_of(exc, exchange.phase)
    exchange.failure = failure
    return _httpx_error(failure)


def _httpx_error(failure: Failure) -> httpx.TransportError:
    """Only a timeout is a timeout: refused, unresolved and cut connections are not."""
    kind = _HTTPX_TIMEOUTS.get(failure.cause, httpx.ConnectTimeout) if failure.timeout else None
    if kind is None:
        kind = _HTTPX_ERRORS.get(failure.cause, httpx.ReadError)  # a reset, a write that failed
    return kind(failure.detail)


_HTTPX_TIMEOUTS: dict[UpstreamCause, type[httpx.TransportError]] = {
    UpstreamCause.POOL_TIMEOUT: httpx.PoolTimeout,
    UpstreamCause.WRITE_TIMEOUT: httpx.WriteTimeout,
    UpstreamCause.READ_TIMEOUT: httpx.ReadTimeout,
}  # connecting (and resolving) otherwise
_HTTPX_ERRORS: dict[UpstreamCause, type[httpx.TransportError]] = {
    UpstreamCause.DNS: httpx.ConnectError,
    UpstreamCause.REFUSED: httpx.ConnectError,
    UpstreamCause.TLS: httpx.ConnectError,
    UpstreamCause.PROXY: httpx.ProxyError,
    UpstreamCause.PROTOCOL: httpx.RemoteProtocolError,
}
