"""A lookup that claims the fill lock when nothing servable is stored (Store.lookup_or_lead): on
every store, the script's reading of the stored generation against the codec's, and the wrappers
(breaker, cuts) around it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from proxy.cache.ports import Claim, FillLock, Store, StoreRefused, StoreUnavailable
from proxy.core.cuts import Cuts
from proxy.core.model import Entry, EntryKey, Lookup
from proxy.ops.metrics import Metrics
from proxy.store import codec
from proxy.store.connection import close_client
from proxy.store.cutting import CutListener, CuttingStore
from proxy.store.guard import GuardedStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import (
    RedisStore,
    entry_redis_key,
    generation_redis_key,
    lock_redis_key,
)
from tests.store.backends import REDIS_BACKENDS, ClientFactory, redis_backend
from tests.store.test_fill_lock import Replica, start_replicas

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
KEY = EntryKey(RUN, "run:s1")
NOW = 1.8e9


def entry(generation: int = 0, stored_at: float = 1.7e9) -> Entry:
    return Entry(200, "application/json", b'{"id":1}', '"e"', stored_at, 60, 600, generation)


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


@pytest.fixture(params=REDIS_BACKENDS)
def clients(request: pytest.FixtureRequest) -> ClientFactory:
    return redis_backend(request)


@pytest.fixture
async def redis_store(clients: ClientFactory) -> AsyncIterator[tuple[RedisStore, list[int]]]:
    """A RedisStore on an empty Redis, and the corrupt values it has counted."""
    corrupt: list[int] = []
    store = RedisStore(clients(1.0), timeout=1.0, on_corrupt=lambda: corrupt.append(1))
    yield store, corrupt
    await store.close()


async def put(clients: ClientFactory, redis_key: str, value: bytes | None) -> None:
    """Write (or delete) a raw value, as another writer would, on a client of its own."""
    client = clients(1.0)
    try:
        if value is None:
            await client.delete(redis_key)
        else:
            await client.set(redis_key, value)
    finally:
        await close_client(client)


# -- the contract, on every store ----------------------------------------------------------


async def test_a_cold_key_is_led(store: Store) -> None:
    claim = await store.lookup_or_lead(KEY, "token", lease=5)

    assert claim == Claim(Lookup(None, 0), FillLock.LED)


@pytest.mark.parametrize("stored_at", [NOW - 1, NOW - 300], ids=["fresh", "stale"])
async def test_a_stored_entry_comes_back_without_asking_for_the_lock(
    store: Store, stored_at: float
) -> None:
    await store.save(KEY, entry(stored_at=stored_at))

    claim = await store.lookup_or_lead(KEY, "token", lease=5)

    assert claim == Claim(Lookup(entry(stored_at=stored_at), 0), FillLock.NOT_ASKED)
    assert await store.begin_fill(KEY, "another", lease=5)  # nobody took it


async def test_a_retried_call_whose_answer_was_lost_leads_as_the_call_did(store: Store) -> None:
    """redis-py retries a call once when its connection fails: the script may have run, and the
    retry then finds the lock under its own token, which is still its lead, not another's."""
    first = await store.lookup_or_lead(KEY, "token", lease=5)
    retried = await store.lookup_or_lead(KEY, "token", lease=5)
    locked_again = await store.begin_fill(KEY, "token", lease=5)
    another = await store.lookup_or_lead(KEY, "another", lease=5)

    assert first.lock is retried.lock is FillLock.LED
    assert locked_again
    assert another.lock is (FillLock.LED if isinstance(store, MemoryStore) else FillLock.HELD)


async def test_an_entry_of_an_older_generation_is_led(store: Store) -> None:
    await store.save(KEY, entry())
    await store.invalidate_run(RUN, keep_for=60)

    claim = await store.lookup_or_lead(KEY, "token", lease=5)

    assert claim.lock is FillLock.LED
    assert claim.found.entry is None
    assert claim.found.generation == (await store.lookup(KEY)).generation > 0


async def test_the_led_fill_lands_for_the_next_lookup(store: Store) -> None:
    claim = await store.lookup_or_lead(KEY, "token", lease=5)
    await store.end_fill(KEY, "token", entry(claim.found.generation))

    again = await store.lookup_or_lead(KEY, "another", lease=5)

    assert again == Claim(Lookup(entry(claim.found.generation), 0), FillLock.NOT_ASKED)


# -- Redis: the lock itself ----------------------------------------------------------------


async def test_a_second_lookup_is_flagged_as_the_waiter_and_woken(clients: ClientFactory) -> None:
    a, b = await start_replicas(clients)
    try:
        await flagged_and_woken(a, b)
    finally:
        await a.close()
        await b.close()


async def flagged_and_woken(a: Replica, b: Replica) -> None:
    led = await a.store.lookup_or_lead(KEY, "leader", lease=5)
    with b.store.watch_fill(KEY) as landed:
        assert landed is not None
        held = await b.store.lookup_or_lead(KEY, "waiter", lease=5)
        await a.store.end_fill(KEY, "leader", entry())
        await asyncio.wait_for(landed, 2)  # announced: b flagged itself as a waiter

    assert led.lock is FillLock.LED
    assert held == Claim(Lookup(None, 0), FillLock.HELD)
    assert (await b.store.lookup(KEY)).entry == entry()


async def test_a_hit_leaves_no_lock_in_redis(
    redis_store: tuple[RedisStore, list[int]], clients: ClientFactory
) -> None:
    store, _ = redis_store
    await store.save(KEY, entry())

    await store.lookup_or_lead(KEY, "token", lease=5)

    client = clients(1.0)
    try:
        assert not await client.exists(lock_redis_key(KEY))
    finally:
        await close_client(client)


# -- Redis: judging the stored generation in Lua as the codec wrote it ---------------------

MICROS = 1_700_000_000_123_456  # what Redis writes: its clock in microseconds
EDGE = 2**53  # Lua holds integers exactly below it
GENERATIONS = [
    # (the entry's generation, the run's counter as stored (None: absent), the lock)
    (0, None, FillLock.NOT_ASKED),
    (0, b"0", FillLock.NOT_ASKED),
    (1, None, FillLock.LED),  # the counter expired: never 0 again, so never this entry's
    *((g, str(g).encode(), FillLock.NOT_ASKED) for g in (255, 256, 2**32 - 1, 2**32, MICROS)),
    *((g, str(g + 1).encode(), FillLock.LED) for g in (255, 2**32 - 1, 2**32, MICROS)),
    (MICROS + 1, str(MICROS).encode(), FillLock.LED),
    (EDGE - 1, str(EDGE - 1).encode(), FillLock.NOT_ASKED),
    (EDGE, str(EDGE - 1).encode(), FillLock.LED),  # above the edge: differs from any below
    (2**64 - 1, str(EDGE - 1).encode(), FillLock.LED),
    (EDGE + 1, str(EDGE + 1).encode(), FillLock.NOT_ASKED),  # Lua cannot judge: Python does
    (EDGE + 1, str(EDGE + 2).encode(), FillLock.NOT_ASKED),
    (0, b"not a number", FillLock.NOT_ASKED),
    (5, b"1_000", FillLock.NOT_ASKED),
]


@pytest.mark.parametrize(("written", "counter", "lock"), GENERATIONS)
async def test_the_script_reads_the_generation_where_the_codec_writes_it(
    redis_store: tuple[RedisStore, list[int]],
    clients: ClientFactory,
    written: int,
    counter: bytes | None,
    lock: FillLock,
) -> None:
    """Locked only when the entry is surely of another generation; when Lua cannot tell, the
    entry comes back unlocked and Python judges it exactly, as a plain lookup does."""
    store, _ = redis_store
    await put(clients, generation_redis_key(RUN), counter)
    await put(clients, entry_redis_key(KEY), codec.encode(entry(written)))
    plain = await store.lookup(KEY)

    claim = await store.lookup_or_lead(KEY, "token", lease=5)

    assert claim.lock is lock
    assert claim.found.generation == plain.generation
    assert claim.found.entry == (None if lock is FillLock.LED else plain.entry)
    assert plain.entry is None or lock is FillLock.NOT_ASKED  # a servable entry never locks


@pytest.mark.parametrize(
    ("value", "lock", "counted"),
    [
        (b"\x00\xffnot an entry", FillLock.NOT_ASKED, True),
        (b'{"written": "by another app"}', FillLock.NOT_ASKED, True),
        (codec.encode(entry())[:20], FillLock.NOT_ASKED, True),  # cut inside the header
        (None, FillLock.LED, False),  # a hash: MGET reads another type as nothing
    ],
    ids=["garbage", "foreign-json", "truncated", "foreign-type"],
)
async def test_a_value_lua_cannot_read_is_a_miss_without_the_lock(
    redis_store: tuple[RedisStore, list[int]],
    clients: ClientFactory,
    value: bytes | None,
    lock: FillLock,
    counted: bool,
) -> None:
    """Judged (and counted as corrupt) in Python, as a plain lookup judges it; the fill then
    claims the lock with lead_fill."""
    store, corrupt = redis_store
    if value is None:
        client = clients(1.0)
        await client.hset(entry_redis_key(KEY), "field", "value")
        await close_client(client)
    else:
        await put(clients, entry_redis_key(KEY), value)

    claim = await store.lookup_or_lead(KEY, "token", lease=5)

    assert claim == Claim(Lookup(None, 0), lock)
    assert corrupt == ([1] if counted else [])


# -- the breaker and the cuts around it ----------------------------------------------------


class RefusingStore(MemoryStore):
    """A memory store that refuses the lock's write while `refusing` is set, as Redis out of
    memory under `noeviction` refuses LOOKUP_OR_LEAD's SET, and counts the calls it gets."""

    def __init__(self) -> None:
        super().__init__(max_entries=10)
        self.refusing = False
        self.down = False
        self.claims = 0

    async def lookup_or_lead(self, key: EntryKey, token: str, lease: float) -> Claim:
        self.claims += 1
        if self.down:
            raise StoreUnavailable("down")
        claim = await super().lookup_or_lead(key, token, lease)
        if self.refusing and claim.lock is not FillLock.NOT_ASKED:
            raise StoreRefused("OOM command not allowed")
        return claim


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_the_breaker_counts_it_as_the_lookup_and_skips_it_while_open() -> None:
    inner, metrics, now = RefusingStore(), Metrics(CollectorRegistry()), [0.0]
    guard = GuardedStore(inner, metrics, open_for=1.0, clock=lambda: now[0])
    await guard.lookup_or_lead(KEY, "token", lease=5)
    inner.down = True

    with pytest.raises(StoreUnavailable):
        await guard.lookup_or_lead(KEY, "token", lease=5)
    with pytest.raises(StoreUnavailable):  # open: not even tried
        await guard.lookup_or_lead(KEY, "token", lease=5)

    assert inner.claims == 2
    latency = "lunary_proxy_store_operation_duration_seconds_count"
    assert sample(metrics, latency, operation="lookup") == 2
    assert (
        sample(metrics, "lunary_proxy_store_errors_total", operation="lookup", cause="other") == 1
    )


async def test_while_writes_are_refused_it_is_a_plain_lookup() -> None:
    inner, metrics = RefusingStore(), Metrics(CollectorRegistry())
    guard = GuardedStore(inner, metrics)
    stored = EntryKey(RUN, "run:stored")
    await inner.save(stored, entry())
    inner.refusing = True

    refused = await guard.lookup_or_lead(KEY, "token", lease=5)  # the lock's write is refused
    after = await guard.lookup_or_lead(KEY, "token", lease=5)
    hit = await guard.lookup_or_lead(stored, "token", lease=5)

    assert refused == after == Claim(Lookup(None, 0), FillLock.NOT_ASKED)
    assert hit == Claim(Lookup(entry(), 0), FillLock.NOT_ASKED)
    assert inner.claims == 1  # then writes are refused for a while: not even tried
    assert guard.writes_refused
    assert (
        sample(metrics, "lunary_proxy_store_errors_total", operation="lookup", cause="other") == 1
    )


async def test_the_cuts_apply_to_what_it_returns() -> None:
    cuts = Cuts(active_ttl=2)
    inner = GuardedStore(MemoryStore(max_entries=10), Metrics(CollectorRegistry()))
    cutting = CuttingStore(inner, cuts, lambda: NOW)
    writer = EntryKey(RUN, "run:writer", "writer")
    await cutting.save(writer, entry(stored_at=NOW - 5))
    listener = CutListener(inner, cutting, cuts, lambda: None)

    before = await cutting.lookup_or_lead(writer, "token", lease=5)
    listener.heard("writer", NOW - 1)
    cut = await cutting.lookup_or_lead(writer, "token", lease=5)
    listener.lost()
    out_of_step = await cutting.lookup_or_lead(EntryKey(RUN, "run:cold"), "token", lease=5)

    assert before == Claim(Lookup(entry(stored_at=NOW - 5), 0), FillLock.NOT_ASKED)
    assert cut == Claim(Lookup(None, 0), FillLock.NOT_ASKED)  # the fill claims it with lead_fill
    assert out_of_step == Claim(Lookup(None, 0), FillLock.LED)
