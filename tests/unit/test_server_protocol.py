"""Deadlines of proxy/web/server.py, on a recording transport: on a real socket the kernel's buffers
swallow any small answer, so only a large one shows on the wire (test_fault_matrix); and a
keep-alive connection's later requests are hard to time from outside."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from proxy.web.server import GuardedHttpProtocol

TIMEOUT = 0.05


class RecordingTransport(asyncio.Transport):
    """Holds whatever is written, as a socket whose peer reads nothing does."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: tuple[int | None, int | None] | None = None
        self.unsent = 0
        self.sent = bytearray()
        self.aborted = self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.unsent += len(data)
        self.sent += data

    def is_closing(self) -> bool:
        return self.aborted or self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def no_app(scope: Any, receive: Any, send: Any) -> None:
    """No request reaches it: the send-side tests drive the protocol's send side only."""


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def connected(app: Any = no_app) -> tuple[GuardedHttpProtocol, RecordingTransport]:
    config = uvicorn.Config(app=app, lifespan="off", log_config=None)
    config.load()
    protocol = GuardedHttpProtocol(
        config=config,
        server_state=ServerState(),
        app_state={},
        _loop=asyncio.get_running_loop(),
        client_timeout=TIMEOUT,
    )
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_any_unsent_byte_starts_the_send_timeout() -> None:
    protocol, transport = await connected()
    transport.unsent = 100  # a small answer the client does not read
    protocol.pause_writing()
    await asyncio.sleep(TIMEOUT * 2.5)

    assert transport.limits == (0, None)  # high-water mark 0: one byte pauses writing
    assert transport.aborted
    protocol.connection_lost(None)


async def test_a_client_that_keeps_reading_is_given_more_time() -> None:
    protocol, transport = await connected()
    transport.unsent = 100
    protocol.pause_writing()
    await asyncio.sleep(TIMEOUT * 0.6)
    transport.unsent = 50  # it read some
    await asyncio.sleep(TIMEOUT * 0.8)

    assert not transport.aborted
    protocol.connection_lost(None)


@pytest.mark.parametrize("pipelined", [False, True])
async def test_a_keep_alive_request_whose_head_stops_coming_is_cut(pipelined: bool) -> None:
    protocol, transport = await connected(ok_app)
    first, partial = b"GET / HTTP/1.1\r\nHost: p\r\n\r\n", b"GET / HTTP/1.1\r\nHost: p\r\nX-Pad: "
    if pipelined:  # the second head begins in the read that completed the first
        protocol.data_received(first + partial)
    else:
        protocol.data_received(first)
        await asyncio.sleep(TIMEOUT / 5)  # answered; the connection is kept alive
        assert transport.sent.startswith(b"HTTP/1.1 200 OK\r\n")
        assert not transport.closed
        protocol.data_received(partial)  # then nothing more
    await asyncio.sleep(TIMEOUT * 3)

    assert transport.closed
    protocol.connection_lost(None)


async def test_a_keep_alive_request_whose_head_came_whole_is_not_cut() -> None:
    protocol, transport = await connected(ok_app)
    for _ in range(2):
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: p\r\n\r\n")
        await asyncio.sleep(TIMEOUT * 2)

    assert transport.sent.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert not transport.closed
    protocol.connection_lost(None)
