"""The send timeout of proxy/server.py, on a recording transport: on a real socket the kernel's
buffers swallow any small answer, so only a large one shows on the wire (test_fault_matrix)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from proxy.server import GuardedHttpProtocol

TIMEOUT = 0.05


class RecordingTransport(asyncio.Transport):
    """Holds whatever is written, as a socket whose peer reads nothing does."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: tuple[int | None, int | None] | None = None
        self.unsent = 0
        self.aborted = self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.unsent += len(data)

    def is_closing(self) -> bool:
        return self.aborted or self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def no_app(scope: Any, receive: Any, send: Any) -> None:
    """No request reaches it: these tests drive the protocol's send side only."""


async def connected() -> tuple[GuardedHttpProtocol, RecordingTransport]:
    config = uvicorn.Config(app=no_app, lifespan="off", log_config=None)
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
