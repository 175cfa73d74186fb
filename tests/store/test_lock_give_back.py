"""A lookup that ran on Redis but never reached its caller (its timeout fired, or the request was
cancelled, after the script took the fill lock) gives the lock back, on a real redis-server.

A relay between the store and Redis holds back Redis's replies on the connections open when
told to: the script runs, the store hears nothing, as with a reply lost in a slow network.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from proxy.cache.ports import FillLock, StoreError
from proxy.core.model import EntryKey
from proxy.store.connection import connect
from proxy.store.redis import RedisStore, lock_redis_key
from tests.servers import RedisServer

KEY = EntryKey("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "run:s1")
WARM = EntryKey("b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "run:s1")
LEASE = 60.0  # far longer than the test: a lock that goes away was given back


class _Pipe:
    """One client connection through the relay; `flowing` clear holds Redis's replies."""

    def __init__(self) -> None:
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: list[asyncio.Task[None]] = []


class HoldingRelay:
    """A loopback TCP relay to Redis that can hold back replies on the connections open now."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._pipes: list[_Pipe] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"

    def hold(self) -> None:
        """Redis's replies on every connection open now stay in the relay (new ones flow)."""
        for pipe in self._pipes:
            pipe.flowing.clear()

    async def close(self) -> None:
        for pipe in self._pipes:
            pipe.flowing.set()
            for task in pipe.tasks:
                task.cancel()
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        pipe = _Pipe()
        self._pipes.append(pipe)
        pipe.tasks = [
            asyncio.create_task(_copy(reader, up_writer, None)),
            asyncio.create_task(_copy(up_reader, writer, pipe.flowing)),
        ]


async def _copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event | None
) -> None:
    try:
        while data := await reader.read(65536):
            if flowing is not None:
                await flowing.wait()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def relayed(
    redis_url: str, redis_server: RedisServer
) -> AsyncIterator[tuple[HoldingRelay, RedisStore]]:
    """A store on Redis through the relay, its one pooled connection open and scripts loaded."""
    relay = HoldingRelay(redis_server.port)
    await relay.start()
    store = RedisStore(connect(relay.url, cluster=False, timeout=2.0), timeout=0.3)
    claim = await store.lookup_or_lead(WARM, "warm", lease=5)
    assert claim.lock is FillLock.LED
    await store.end_fill(WARM, "warm", None)
    yield relay, store
    await store.close()
    await relay.close()


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether `condition` came true within `seconds` (polled; no duration is asserted)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def lock_held(server: RedisServer) -> bool:
    return bool(server.client().exists(lock_redis_key(KEY)))


async def test_a_lookup_whose_timeout_fired_after_the_script_ran_gives_the_lock_back(
    relayed: tuple[HoldingRelay, RedisStore], redis_server: RedisServer
) -> None:
    relay, store = relayed
    redis_server.client().config_resetstat()
    relay.hold()

    with pytest.raises(StoreError):
        await store.lookup_or_lead(KEY, "lost", lease=LEASE)

    stats = redis_server.client().info("commandstats")
    assert stats["cmdstat_set"]["calls"] == 1  # the script ran: it took the lock
    assert await until(lambda: not lock_held(redis_server))


async def test_a_lookup_cancelled_after_the_script_ran_gives_the_lock_back(
    relayed: tuple[HoldingRelay, RedisStore], redis_server: RedisServer
) -> None:
    relay, store = relayed
    relay.hold()

    looking = asyncio.create_task(store.lookup_or_lead(KEY, "gone", lease=LEASE))
    took = await until(lambda: lock_held(redis_server))
    looking.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await looking

    assert took  # the script ran and took the lock before the request went away
    assert looking.cancelled()
    assert await until(lambda: not lock_held(redis_server))
