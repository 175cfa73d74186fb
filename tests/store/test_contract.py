"""One contract, every store: the embedded memory store, and RedisStore on fakeredis and on a
real redis-server (the same scripts and calls; the real one is the reference)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.cache.ports import Store
from proxy.core.model import Entry, EntryKey
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.store.backends import REDIS_BACKENDS, redis_backend

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
BODY = '{"id":"a0eebc99","text":"héllo ✓"}'.encode() + bytes(range(256))


def entry(body: bytes = BODY, fresh: float = 60, stale: float = 600, status: int = 200) -> Entry:
    return Entry(status, "application/json; charset=utf-8", body, '"etag"', 1.7e9, fresh, stale)


@pytest.fixture(params=["memory", *REDIS_BACKENDS])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        memory = MemoryStore(max_entries=100)
        yield memory
        await memory.close()
    else:
        redis_store = RedisStore(redis_backend(request)(1.0), timeout=1.0)
        yield redis_store
        await redis_store.close()


async def test_absent_key_is_a_miss(store: Store) -> None:
    found = await store.lookup(EntryKey(RUN, "run:s1"))

    assert found.entry is None
    assert found.generation == 0


async def test_saved_entry_comes_back_byte_for_byte(store: Store) -> None:
    key = EntryKey(RUN, "run:s1")
    await store.save(key, entry())

    found = await store.lookup(key)

    assert found.entry == entry()
    assert found.entry is not None
    assert found.entry.body == BODY


async def test_entries_are_separate_per_key(store: Store) -> None:
    await store.save(EntryKey(RUN, "run:s1"), entry(b"one"))
    await store.save(EntryKey(RUN, "run:s2"), entry(b"two"))
    await store.save(EntryKey(RUN, "related:s1"), entry(b"three"))

    bodies = [
        (await store.lookup(EntryKey(RUN, name))).entry
        for name in ("run:s1", "run:s2", "related:s1", "related:s2")
    ]

    assert [e.body if e else None for e in bodies] == [b"one", b"two", b"three", None]


async def test_entry_disappears_after_fresh_plus_stale_time(store: Store) -> None:
    key = EntryKey(RUN, "run:s1")
    await store.save(key, entry(fresh=0.1, stale=0.1))

    assert (await store.lookup(key)).entry is not None
    await asyncio.sleep(0.35)
    assert (await store.lookup(key)).entry is None


async def test_zero_lifetime_is_not_kept(store: Store) -> None:
    key = EntryKey(RUN, "run:s1")
    await store.save(key, entry(fresh=0, stale=0))

    assert (await store.lookup(key)).entry is None


async def test_overwrite_replaces_the_entry(store: Store) -> None:
    key = EntryKey(RUN, "run:s1")
    await store.save(key, entry(b"old"))
    await store.save(key, entry(b"new"))

    found = await store.lookup(key)

    assert found.entry is not None
    assert found.entry.body == b"new"


async def test_ping_answers(store: Store) -> None:
    await store.ping()


async def test_invalidating_a_run_drops_every_scope_and_route(store: Store) -> None:
    keys = [EntryKey(RUN, name) for name in ("run:s1", "run:s2", "related:s1", "related:s2")]
    other = EntryKey("b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "run:s1")
    for key in [*keys, other]:
        await store.save(key, entry())

    await store.invalidate_run(RUN, keep_for=60)

    assert [(await store.lookup(key)).entry for key in keys] == [None] * 4
    assert (await store.lookup(other)).entry == entry()


async def test_a_fill_that_read_before_an_invalidation_stores_a_dead_entry(store: Store) -> None:
    key = EntryKey(RUN, "run:s1")
    before = await store.lookup(key)  # a fill starts...
    await store.invalidate_run(RUN, keep_for=60)  # ...a write lands meanwhile...
    stale_fill = Entry(200, "application/json", b"old", '"e"', 1.7e9, 60, 0, before.generation)
    await store.save(key, stale_fill)  # ...and the fill stores what it fetched before the write

    after = await store.lookup(key)
    await store.save(key, Entry(200, "application/json", b"new", '"e"', 1.7e9, 60, 0,
                                after.generation))  # fmt: skip

    assert after.entry is None
    assert after.generation != before.generation
    found = await store.lookup(key)
    assert found.entry is not None
    assert found.entry.body == b"new"


async def test_a_generation_is_never_reused_even_after_it_expired(store: Store) -> None:
    key = EntryKey(RUN, "run:s1")
    await store.invalidate_run(RUN, keep_for=0.2)
    written = await store.lookup(key)
    await store.save(key, Entry(200, "application/json", b"old", '"e"', 1.7e9, 60, 0,
                                written.generation))  # fmt: skip
    await asyncio.sleep(0.3)  # the generation record expired; the entry did not

    await store.invalidate_run(RUN, keep_for=60)  # a later write

    assert (await store.lookup(key)).entry is None


async def test_leading_a_fill_reads_what_is_stored_now(store: Store) -> None:
    """The leader learns, in the call that gives it the lock, of an entry stored meanwhile."""
    empty, stored = EntryKey(RUN, "run:s1"), EntryKey(RUN, "run:s2")
    await store.save(stored, entry())

    nothing = await store.lead_fill(empty, "token-1", lease=5)
    something = await store.lead_fill(stored, "token-2", lease=5)

    assert nothing is not None
    assert nothing.entry is None
    assert something is not None
    assert something.entry == entry()


async def test_leading_a_fill_after_an_invalidation_reads_no_entry(store: Store) -> None:
    key = EntryKey(RUN, "run:s1")
    await store.save(key, entry())
    await store.invalidate_run(RUN, keep_for=60)

    current = await store.lead_fill(key, "token", lease=5)

    assert current is not None
    assert current.entry is None
    assert current.generation > 0
