"""uvicorn's HTTP protocol with the client timeouts nginx has and uvicorn lacks.

uvicorn bounds only the idle time between keep-alive requests. A client that connects and sends
nothing, sends its headers a byte a minute, stops half-way through a body, or never reads its
answer holds a socket (and, for a passthrough, an upstream connection and a buffered body) for
ever: enough of them exhaust the worker's descriptors or memory. So, each bounded by
PROXY_CLIENT_TIMEOUT, as nginx's `client_header_timeout`, `client_body_timeout` and
`send_timeout` are:

- the request line and headers must arrive whole within the timeout of their first byte (or of
  the connection, for the first request);
- while a body is expected, some of it must arrive every timeout (unless the proxy itself has
  paused reading, waiting on the upstream);
- while the answer waits in the send buffer, the client must read some of it every timeout.

A read timeout closes the connection (the request, if started, sees the client gone); a send
timeout aborts it, since a close would wait on the buffer the client does not read.

uvicorn's httptools protocol also takes headers of any size, and answers a request it cannot
parse in plain text. Here the request line and headers are bounded by MAX_HEADER_BYTES (431,
as nginx's `large_client_header_buffers` bound them), and both refusals are JSON like every
other error the proxy makes.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, cast

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("proxy.server")
# Lunary's Node server refuses more than 16 KiB of headers: 64 KiB leaves room, and a bound
MAX_HEADER_BYTES = 65_536


HEAD_END = b"\r\n\r\n"


class GuardedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus header, body and send deadlines (see the module docstring)."""

    def __init__(self, *args: Any, client_timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client_timeout = client_timeout
        self._read_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._reading_headers = True  # the connection's first request has not started yet
        self._reading_body = False
        self._header_bytes = 0
        self._header_tail = b""  # the last bytes of the head so far: its end may straddle reads
        self._headers_too_large = False
        self._unsent = 0

    # -- reading: headers within a deadline, then a body that keeps coming -----------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read(self._header_timeout)

    def on_message_begin(self) -> None:
        if not self._reading_headers:  # a keep-alive connection's next request has begun
            self._reading_headers = True
            self._arm_read(self._header_timeout)
        super().on_message_begin()

    def _unsupported_upgrade_warning(self) -> None:
        """Silent: the proxy serves no WebSockets (`ws="none"`), so an Upgrade is a plain
        request, not the missing library uvicorn's two warnings per request would report."""

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it could not parse (or whose headers were too large)."""
        if self._headers_too_large:
            status = b"431 Request Header Fields Too Large"
            error = ("headers_too_large", f"The request headers exceed {MAX_HEADER_BYTES} bytes.")
        else:
            status = b"400 Bad Request"
            error = ("bad_request", "The request is not valid HTTP/1.1.")
        body = orjson.dumps({"error": error[0], "message": error[1]})
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, len(body), body)
        )
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        # counted before parsing: httptools buffers a header line whole before its callbacks
        # see it, so one endless value would be read until the header timeout
        if not self._reading_body and self._head_too_large(data):
            self._headers_too_large = True
            self.send_400_response("")
            return
        super().data_received(data)
        if self._reading_body:  # the body made progress: its deadline starts again
            self._arm_read(self._body_timeout)

    def _head_too_large(self, data: bytes) -> bool:
        """Would the request line and headers, with this read, pass MAX_HEADER_BYTES?"""
        seen = self._header_tail + data
        end = seen.find(HEAD_END)
        if end != -1:  # the head ends in this read; what follows is a body or the next request
            return self._header_bytes + end - len(self._header_tail) > MAX_HEADER_BYTES
        self._header_bytes += len(data)
        self._header_tail = seen[-3:]
        return self._header_bytes > MAX_HEADER_BYTES

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._reading_body = True
        self._header_bytes, self._header_tail = 0, b""
        self._arm_read(self._body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._disarm_read()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read()
        self._disarm_send()
        super().connection_lost(exc)

    def _arm_read(self, callback: Any) -> None:
        self._disarm_read()
        self._read_timer = self.loop.call_later(self._client_timeout, callback)

    def _disarm_read(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _header_timeout(self) -> None:
        self._read_timer = None
        if self._reading_headers and not self.transport.is_closing():
            log.info("client sent no complete request in time: connection closed")
            self.transport.close()

    def _body_timeout(self) -> None:
        self._read_timer = None
        if not self._reading_body or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the proxy is not reading: not the client's fault
            self._arm_read(self._body_timeout)
            return
        log.info("client stopped sending its request body: connection closed")
        self.transport.close()

    # -- sending: the client must keep reading ---------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._unsent = self.transport.get_write_buffer_size()
        self._disarm_send()
        self._send_timer = self.loop.call_later(self._client_timeout, self._send_timeout)

    def resume_writing(self) -> None:
        self._disarm_send()
        super().resume_writing()

    def _disarm_send(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timeout(self) -> None:
        self._send_timer = None
        unsent = self.transport.get_write_buffer_size()
        if unsent < self._unsent:  # slow, but reading: give it another period
            self._unsent = unsent
            self._send_timer = self.loop.call_later(self._client_timeout, self._send_timeout)
            return
        log.info("client stopped reading its answer: connection aborted")
        self.transport.abort()


def guarded_protocol(client_timeout: float) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's `http` option (a partial, so workers can unpickle it)."""
    return cast(type[asyncio.Protocol], partial(GuardedHttpProtocol, client_timeout=client_timeout))
