"""httpx-aiohttp's transport on the proxy's own aiohttp session, sending exactly the request
httpx built: its request-target verbatim, every header line, a write timeout, and aiohttp's
errors raised as the httpx errors they are.

The stock `AiohttpTransport.handle_async_request` cannot carry a proxy's request: it sends
`str(request.url)`, which httpx has quoted (`{` becomes `%7B`) and yarl quotes again (`%61`
becomes `a`); it hands aiohttp a mapping of headers, which joins repeated lines; and it maps a
refused connection, a failed DNS lookup and a connection closed before the answer all to
`httpx.ConnectTimeout` (an upstream that is down would be answered 504, not 502). This class
keeps the rest of it (the session it is given, made on first use; closing it).
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

from proxy.upstream.session import EnvProxy
from proxy.upstream.upload import Upload, uploading

CHUNK = 64 * 1024
# handed to the stock constructor so that it builds no context of its own; never used
_UNUSED_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class SessionTransport(AiohttpTransport):
    """Sends httpx requests through `session()` (called once, inside the running loop).

    Honours the `target` request extension as httpcore does (the request-target, sent as is)
    and every httpx timeout: connect, read, pool, and write, which aiohttp lacks (upload.py).
    """

    def __init__(self, session: Callable[[], aiohttp.ClientSession], proxy: EnvProxy) -> None:
        # TLS is the session's (aiohttp's default context, CA paths read at the handshake).
        # The stock transport would build an httpx context it never uses: reading the CA
        # bundle for nothing, and failing start-up on a bad SSL_CERT_FILE.
        super().__init__(verify=_UNUSED_TLS, trust_env=False, client=session)
        self._proxy = proxy

    def _session(self) -> aiohttp.ClientSession:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        return self.client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
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
                proxy_auth=self._proxy.auth,
            )
        except asyncio.CancelledError:
            if upload.cancelled_by_stall():
                raise httpx.WriteTimeout("the upstream stopped reading the body") from None
            raise
        except (aiohttp.ClientError, OSError) as exc:  # (TimeoutError is an OSError)
            raise _failure(exc, upload) from exc
        upload.response = response  # the body may still be going up while the answer comes
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, upload),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": _reason(response)},
        )


class _Body(httpx.AsyncByteStream):
    """An answer's body as it arrives, a chunk at a time: aiohttp reads no further ahead than
    its buffer, so a slow reader holds the upstream back (back-pressure)."""

    def __init__(self, response: aiohttp.ClientResponse, upload: Upload) -> None:
        self._response = response
        self._upload = upload

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise _failure(exc, self._upload) from exc

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


def _failure(exc: aiohttp.ClientError | OSError, upload: Upload) -> Exception:
    """What the caller is told: the body's own failure, the write timeout, or the httpx error
    the aiohttp error is."""
    if upload.failure is not None:
        return upload.failure
    if upload.stalled:
        return httpx.WriteTimeout("the upstream stopped reading the body")
    return _httpx_error(exc)


def _httpx_error(exc: aiohttp.ClientError | OSError) -> httpx.TransportError:
    """Only a timeout is a timeout: refused, unresolved and cut connections are not."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # connecting, or waiting for the pool
        return httpx.ConnectTimeout(message)
    if isinstance(exc, TimeoutError):  # aiohttp's SocketTimeoutError: between reads
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, unreachable, TLS
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message)  # closed before the answer, or within it
    if isinstance(exc, aiohttp.ClientResponseError):  # an answer that is not HTTP/1.1
        return httpx.RemoteProtocolError(message)
    return httpx.ReadError(message)  # a reset, a write that failed
