"""Request bodies held at once: in memory within a total bound, then spooled, then refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.web.buffering import (
    MEMORY_BODIES,
    READ_BACKS_AT_ONCE,
    BodyBuffer,
    RequestBody,
    SpoolUnavailable,
)

BUFFER = 1_000


async def arriving(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def whole(body: RequestBody) -> bytes:
    return b"".join([chunk async for chunk in body.chunks()])


async def test_many_bodies_at_once_never_hold_more_than_the_memory_bound() -> None:
    buffer = BodyBuffer(max_bytes=10 * BUFFER, memory_bytes=BUFFER, spool_bytes=10 * BUFFER)
    held = [await buffer.read(arriving(b"m" * BUFFER)) for _ in range(MEMORY_BODIES)]
    assert all(body._spool is None for body in held)

    over = await buffer.read(arriving(b"s" * 600, b"s" * 400))  # memory is spent: spooled

    assert over._spool is not None
    assert await whole(over) == b"s" * BUFFER
    over.close()
    held.pop().close()  # one body's memory given back: the next fits in memory again
    again = await buffer.read(arriving(b"a" * BUFFER))
    assert again._spool is None
    assert await again.whole() == b"a" * BUFFER


async def test_the_spool_budget_refuses_once_memory_and_disk_are_both_spent() -> None:
    buffer = BodyBuffer(max_bytes=10 * BUFFER, memory_bytes=BUFFER, spool_bytes=BUFFER)
    held = [await buffer.read(arriving(b"m" * BUFFER)) for _ in range(MEMORY_BODIES)]
    spooled = await buffer.read(arriving(b"s" * BUFFER))

    with pytest.raises(SpoolUnavailable):
        await buffer.read(arriving(b"x"))

    spooled.close()
    for body in held:
        body.close()
    assert await (await buffer.read(arriving(b"x"))).whole() == b"x"


async def test_a_body_dropped_half_way_gives_its_memory_back() -> None:
    buffer = BodyBuffer(max_bytes=10 * BUFFER, memory_bytes=BUFFER, spool_bytes=0)

    async def cut_short() -> AsyncIterator[bytes]:
        yield b"h" * BUFFER
        raise ConnectionResetError

    for _ in range(MEMORY_BODIES + 1):
        with pytest.raises(ConnectionResetError):
            await buffer.read(cut_short())
    # nothing leaked: a full body still fits in memory with no spool budget at all
    assert await (await buffer.read(arriving(b"k" * BUFFER))).whole() == b"k" * BUFFER


async def test_spooled_bodies_are_read_back_a_few_at_a_time() -> None:
    buffer = BodyBuffer(max_bytes=10 * BUFFER, memory_bytes=BUFFER, spool_bytes=100 * BUFFER)
    bodies = [await buffer.read(arriving(b"s" * (2 * BUFFER))) for _ in range(6)]
    assert all(body._spool is not None for body in bodies)
    reading, most = 0, 0

    async def read(body: RequestBody) -> bytes:
        nonlocal reading, most
        async with body.reading() as data:
            reading += 1
            most = max(most, reading)
            await asyncio.sleep(0.01)
            reading -= 1
            return data

    read_back = await asyncio.gather(*(read(body) for body in bodies))
    for body in bodies:
        body.close()

    assert most == READ_BACKS_AT_ONCE
    assert read_back == [b"s" * (2 * BUFFER)] * 6
