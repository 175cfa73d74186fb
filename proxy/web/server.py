"""uvicorn's HTTP protocol with the client timeouts nginx has and uvicorn lacks.

uvicorn bounds only the idle time between keep-alive requests. A client that connects and sends
nothing, sends its headers a byte a minute, stops half-way through a body, or never reads its
answer holds a socket (and a buffered body, or for a passthrough answer an upstream connection) for
ever: enough of them exhaust the worker's descriptors or memory. So, each bounded by
PROXY_CLIENT_TIMEOUT, as nginx's `client_header_timeout`, `client_body_timeout` and
`send_timeout` are:

- the request line and headers must arrive whole within the timeout of their first byte (or of
  the connection, for the first request);
- while a body is expected, some of it must arrive every timeout (unless the proxy itself is
  not reading: paused on the upstream, or not yet asking for a `100-continue` body);
- while any of the answer waits unsent, the client must read some of it every timeout (the
  write buffer's high-water mark is 0, so a client that stops reading is noticed however small
  the rest of its answer).

A read timeout closes the connection (the request, if started, sees the client gone); a send
timeout aborts it, since a close would wait on the buffer the client does not read.

uvicorn's httptools protocol also takes heads of any size, answers a request it cannot parse in
plain text, and, with no WebSocket library, leaves an `Upgrade` request's body unparsed, to be
lost or read as the next request (request smuggling). Here the request line and headers are
bounded by MAX_HEADER_BYTES (431, as nginx's `large_client_header_buffers` bound them); an
Upgrade request with a body is refused, one without is answered as plain HTTP/1.1 and its
connection closed after it; every refusal is JSON like the proxy's other errors, and is
followed by a lingering close so that the client reads it instead of a reset.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, cast

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("proxy.web.server")
# Lunary's Node server refuses more than 16 KiB of headers: 64 KiB leaves room, and a bound
MAX_HEADER_BYTES = 65_536
HEAD_END = b"\r\n\r\n"
LINGER_SECONDS = 2.0  # after a refusal, what the client still sends is read and dropped this long

Refusal = tuple[bytes, str, str]  # status line, error code, message
BAD_REQUEST: Refusal = (b"400 Bad Request", "bad_request", "The request is not valid HTTP/1.1.")
HEAD_TOO_LARGE: Refusal = (
    b"431 Request Header Fields Too Large",
    "headers_too_large",
    f"The request line and headers exceed {MAX_HEADER_BYTES} bytes.",
)
UPGRADE_WITH_BODY: Refusal = (
    b"400 Bad Request",
    "bad_request",
    "A request asking for a protocol upgrade may not have a body here.",
)


class RefusedRequest(Exception):
    """Raised in a parser callback to stop parsing; httptools turns it into an HttpParserError,
    which uvicorn answers through `send_400_response`."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus client deadlines, a head bound and safe refusals (see above)."""

    def __init__(self, *args: Any, client_timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client_timeout = client_timeout
        self._read_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._reading_headers = True  # the connection's first request has not started yet
        self._reading_body = False
        self._header_bytes = 0
        self._header_tail = b""  # the last bytes of the head so far: its end may straddle reads
        self._parsed_head_bytes = 0
        self._refusal: Refusal | None = None
        self._unsent = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=0)  # any unsent byte pauses writing: see above
        self._arm_read(self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read()
        self._disarm_send()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    # -- reading: a bounded head within a deadline, then a body that keeps coming ----------

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:  # refused: lingering, what comes is dropped
            return
        # counted before parsing: httptools buffers a header line whole before its callbacks
        # see it, so one endless value would be read until the header timeout
        if not self._reading_body and self._head_too_large(data):
            self._refuse(HEAD_TOO_LARGE)
            return
        super().data_received(data)
        if self._refusal is not None:
            return
        if self._reading_body:  # the body made progress: its deadline starts again
            self._arm_read(self._body_timeout)
        elif self._reading_headers:
            if self._read_timer is None:  # a keep-alive request's head, incomplete: its deadline
                self._arm_read(self._header_timeout)
            seen = self._header_tail + data
            last_end = seen.rfind(HEAD_END)
            if last_end != -1:
                # a pipelined request began after a head that ended in this read: count what
                # of its own head is here (after a body, with no head end, the next reads are)
                self._header_bytes = len(seen) - last_end - len(HEAD_END)
                self._header_tail = seen[-3:]

    def _head_too_large(self, data: bytes) -> bool:
        """Would the request line and headers, with this read, pass MAX_HEADER_BYTES?"""
        seen = self._header_tail + data
        end = seen.find(HEAD_END)
        if end != -1:  # the head ends in this read; what follows is a body or the next request
            return self._header_bytes + end - len(self._header_tail) > MAX_HEADER_BYTES
        self._header_bytes += len(data)
        self._header_tail = seen[-3:]
        return self._header_bytes > MAX_HEADER_BYTES

    def on_message_begin(self) -> None:
        # a keep-alive connection's next request has begun; data_received arms its deadline
        # once this read is parsed, if its head is incomplete by then (most heads come whole
        # in one read: no timer at all)
        self._reading_headers = True
        self._parsed_head_bytes = 0
        super().on_message_begin()

    # A head that starts and ends within one read (a pipelined one, after another) is parsed
    # whole before data_received can look at it: its parts are counted as they are parsed too.

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > MAX_HEADER_BYTES:
            self._refusal = HEAD_TOO_LARGE
            raise RefusedRequest

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes, self._header_tail = 0, b""
        upgrade = self.parser.should_upgrade()
        if upgrade and _declares_body(self.headers):
            # httptools stops parsing at an upgrade: this body would be lost, or parsed as the
            # next request on the connection
            self._refusal = UPGRADE_WITH_BODY
            raise RefusedRequest
        self._reading_body = not upgrade
        # no timer yet for a body: data_received arms it once this read is parsed, if the body
        # is still incomplete by then (most requests complete within the read: no timer at all)
        self._disarm_read()
        super().on_headers_complete()
        if upgrade and self.cycle is not None:
            # answered as plain HTTP/1.1, then closed: nothing after it is parsed as a request
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._disarm_read()
        super().on_message_complete()

    def _arm_read(self, callback: Any) -> None:
        self._disarm_read()
        self._read_timer = self.loop.call_later(self._client_timeout, callback)

    def _disarm_read(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _header_timeout(self) -> None:
        self._read_timer = None
        if not self._reading_headers or self.transport.is_closing():
            return
        if self.flow.read_paused:  # a pipelined request waits for the one before it
            self._arm_read(self._header_timeout)
            return
        log.info("client sent no complete request in time: connection closed")
        self.transport.close()

    def _body_timeout(self) -> None:
        self._read_timer = None
        if not self._reading_body or self.transport.is_closing():
            return
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            self._arm_read(self._body_timeout)  # the proxy is not reading: not the client's fault
            return
        log.info("client stopped sending its request body: connection closed")
        self.transport.close()

    # -- refusals ----------------------------------------------------------------------------

    def _unsupported_upgrade_warning(self) -> None:
        """Silent: an Upgrade is answered as plain HTTP/1.1 (see `on_headers_complete`), not the
        missing WebSocket library uvicorn's two warnings per request would report."""

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it could not parse: the proxy's JSON instead."""
        self._refuse(self._refusal or BAD_REQUEST)

    def _refuse(self, refusal: Refusal) -> None:
        self._refusal = refusal
        self._disarm_read()
        if self.cycle is not None and not self.cycle.response_complete:
            # an earlier request on this connection is still being answered: a refusal written
            # now would be read as its answer
            self.transport.abort()
            return
        status, error, message = refusal
        body = orjson.dumps({"error": error, "message": message})
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, len(body), body)
        )
        # a lingering close, as nginx's: with unread input, close() would send a reset that
        # can destroy the refusal before the client reads it
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

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


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" 0")):
            return True
    return False


def guarded_protocol(client_timeout: float) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's `http` option (a partial, so workers can unpickle it)."""
    return cast(type[asyncio.Protocol], partial(GuardedHttpProtocol, client_timeout=client_timeout))
