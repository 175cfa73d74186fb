"""The in-process tier: what it answers without the store, and every rule that makes it stop."""

from __future__ import annotations

import asyncio
import dataclasses

from prometheus_client import CollectorRegistry

from proxy.cache.ports import StoreError
from proxy.core.model import Entry, EntryKey, Lookup
from proxy.ops.metrics import Metrics
from proxy.store.guard import GuardedStore
from proxy.store.memory import MemoryStore
from proxy.store.near import ENTRY_OVERHEAD, NearStore, NearTier

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
OTHER_RUN = "b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12"
NOW = 1.8e9
KEY = EntryKey(RUN, "run:alice", "alice")
BOBS = EntryKey(RUN, "run:bob", "bob")
RELATED = EntryKey(RUN, "related:alice", "alice")
ELSEWHERE = EntryKey(OTHER_RUN, "run:alice", "alice")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class GatedStore(MemoryStore):
    """A memory store whose lookups wait at a gate: a round trip under way, held open."""

    def __init__(self) -> None:
        super().__init__(max_entries=1000)
        self.gate: asyncio.Event | None = None
        self.reached = asyncio.Event()
        self.lookups = 0
        self.invalidation_gate: asyncio.Event | None = None
        self.invalidation_reached = asyncio.Event()

    async def lookup(self, key: EntryKey) -> Lookup:
        self.lookups += 1
        found = await super().lookup(key)
        if self.gate is not None:
            self.reached.set()
            await self.gate.wait()
        return found

    async def invalidate_run(self, run_id: str, keep_for: float) -> int:
        if self.invalidation_gate is not None:
            self.invalidation_reached.set()
            await self.invalidation_gate.wait()
        return await super().invalidate_run(run_id, keep_for)


class FailingStore(GatedStore):
    async def lookup(self, key: EntryKey) -> Lookup:
        raise StoreError("lookup failed: ConnectionError")


def entry(body: bytes = b'{"v": 1}', stored_at: float = NOW - 1, kept_for: float = 60) -> Entry:
    return Entry(200, "application/json", body, '"e"', stored_at, kept_for, 0.0)


def parts(
    max_bytes: int = 1 << 20, ttl: float = 3.0, inner: GatedStore | None = None
) -> tuple[GatedStore, NearStore, Clock, Metrics]:
    inner = GatedStore() if inner is None else inner
    metrics = Metrics(CollectorRegistry())
    clock = Clock()
    tier = NearTier(max_bytes, ttl, metrics, clock=clock, wall=lambda: NOW)
    tier.live_until = float("inf")  # the listener is subscribed and heard from
    return inner, NearStore(GuardedStore(inner, metrics), tier), clock, metrics


async def read(near: NearStore, key: EntryKey) -> Lookup:
    """As the read driver reads: the tier first, then the store."""
    held = near.peek(key)
    return Lookup(held, held.generation) if held is not None else await near.lookup(key)


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_looked_up_entry_is_answered_again_without_the_store() -> None:
    inner, near, _, metrics = parts()
    await inner.save(KEY, entry())

    first = await read(near, KEY)
    second = await read(near, KEY)

    assert first.entry == second.entry == entry()
    assert second.entry is first.entry  # the very entry the store gave, same bytes
    assert inner.lookups == 1
    assert counted(metrics, "lunary_proxy_near_lookups_total", result="hit") == 1
    assert counted(metrics, "lunary_proxy_near_lookups_total", result="miss") == 1


async def test_each_scope_and_route_is_its_own_entry() -> None:
    inner, near, _, _ = parts()
    await inner.save(KEY, entry(b'{"who": "alice"}'))
    await inner.save(BOBS, entry(b'{"who": "bob"}'))
    await read(near, KEY)

    bobs = await read(near, BOBS)
    related = await read(near, RELATED)

    assert bobs.entry is not None
    assert bobs.entry.body == b'{"who": "bob"}'
    assert related.entry is None
    assert inner.lookups == 3


async def test_an_entry_is_confirmed_by_the_store_after_the_near_ttl() -> None:
    inner, near, clock, metrics = parts(ttl=3.0)
    await inner.save(KEY, entry(b'{"v": 1}'))
    await read(near, KEY)
    await inner.save(KEY, entry(b'{"v": 2}'))  # behind the tier's back: no announcement

    within = await read(near, KEY)
    clock.now += 3.0
    after = await read(near, KEY)

    assert within.entry is not None
    assert within.entry.body == b'{"v": 1}'
    assert after.entry is not None
    assert after.entry.body == b'{"v": 2}'
    assert counted(metrics, "lunary_proxy_near_lookups_total", result="unconfirmed") == 1


async def test_an_entry_the_store_lost_is_dropped_when_confirmed() -> None:
    inner, near, clock, metrics = parts(ttl=3.0)
    await inner.save(KEY, entry())
    await read(near, KEY)
    await inner.invalidate_run(RUN, keep_for=60)  # as a FLUSHALL or an eviction: unannounced

    clock.now += 3.0
    after = await read(near, KEY)
    again = await read(near, KEY)

    assert after.entry is None
    assert again.entry is None
    assert len(near.tier) == 0
    assert counted(metrics, "lunary_proxy_near_invalidations_total", cause="changed") == 1


async def test_no_entry_outlives_its_store_ttl() -> None:
    inner, near, clock, _ = parts(ttl=3.0)
    # stored 59 s ago for 60 s: the store drops it in 1 s, sooner than the near TTL
    await inner.save(KEY, entry(stored_at=NOW - 59, kept_for=60))
    await read(near, KEY)

    clock.now += 0.5
    within = await read(near, KEY)
    clock.now += 0.5
    await read(near, KEY)

    assert within.entry is not None
    assert inner.lookups == 2  # asked again at the store's own expiry, not 3 s later


async def test_an_entry_already_past_its_store_ttl_is_not_kept() -> None:
    inner, near, _, _ = parts()
    await inner.save(KEY, entry(stored_at=NOW - 61, kept_for=60))  # the store's clock differs

    await read(near, KEY)
    await read(near, KEY)

    assert len(near.tier) == 0
    assert inner.lookups == 2


async def test_an_invalidation_drops_every_scope_and_route_of_the_run_only() -> None:
    inner, near, _, metrics = parts()
    for key in (KEY, BOBS, RELATED, ELSEWHERE):
        await inner.save(key, entry())
        await read(near, key)

    near.tier.drop_run(RUN)  # heard from another replica
    for key in (KEY, BOBS, RELATED, ELSEWHERE):
        await read(near, key)

    assert inner.lookups == 4 + 3  # the run's three were asked again; the other run was not
    assert counted(metrics, "lunary_proxy_near_invalidations_total", cause="invalidated") == 3


async def test_an_invalidation_during_a_lookup_is_not_lost() -> None:
    """The store answered with the old entry, but the run was invalidated while the answer
    was on its way: it is passed on (it was current when read) but not kept."""
    inner, near, _, _ = parts()
    await inner.save(KEY, entry())
    inner.gate = asyncio.Event()
    looking = asyncio.create_task(read(near, KEY))
    await inner.reached.wait()

    near.tier.drop_run(RUN)
    inner.gate.set()
    await looking
    inner.gate = None
    await read(near, KEY)

    assert len(near.tier) == 1  # kept from the second lookup only
    assert inner.lookups == 2


async def test_an_invalidation_of_another_run_does_not_refuse_the_answer() -> None:
    inner, near, _, _ = parts()
    await inner.save(KEY, entry())
    inner.gate = asyncio.Event()
    looking = asyncio.create_task(read(near, KEY))
    await inner.reached.wait()

    near.tier.drop_run(OTHER_RUN)
    inner.gate.set()
    await looking

    assert len(near.tier) == 1


async def test_an_invalidation_made_here_drops_the_run_before_and_after_the_store() -> None:
    """Before: no request from then on is answered from the tier. After: a lookup sent while
    the store was being asked read the old generation, and is not kept."""
    inner, near, _, _ = parts()
    await inner.save(KEY, entry())
    await read(near, KEY)
    inner.invalidation_gate = asyncio.Event()
    invalidating = asyncio.create_task(near.invalidate_run(RUN, keep_for=60))
    await inner.invalidation_reached.wait()
    held_while_asking = len(near.tier)
    inner.gate = asyncio.Event()
    racing = asyncio.create_task(read(near, KEY))  # the store still holds the old entry
    await inner.reached.wait()

    inner.invalidation_gate.set()
    await invalidating
    inner.gate.set()
    raced = await racing

    assert held_while_asking == 0
    assert raced.entry is not None  # current when read: passed on, as any lookup would
    assert len(near.tier) == 0  # but not kept


async def test_while_the_listener_is_silent_the_tier_is_bypassed() -> None:
    inner, near, clock, metrics = parts()
    await inner.save(KEY, entry())
    await read(near, KEY)

    near.tier.live_until = clock.now + 1.0  # heard from a moment ago
    clock.now += 1.0  # and nothing since, for the whole heartbeat window
    await read(near, KEY)
    await read(near, KEY)

    assert inner.lookups == 3
    assert len(near.tier) == 1  # kept, not refreshed: nothing is kept while silent
    assert counted(metrics, "lunary_proxy_near_lookups_total", result="bypass") == 2


async def test_a_reset_empties_the_tier_and_refuses_lookups_under_way() -> None:
    inner, near, _, metrics = parts()
    for key in (KEY, ELSEWHERE):
        await inner.save(key, entry())
        await read(near, key)
    inner.gate = asyncio.Event()
    looking = asyncio.create_task(read(near, BOBS))
    await inner.save(BOBS, entry())
    await inner.reached.wait()

    near.tier.reset()  # the listener was lost: announcements may have been missed
    inner.gate.set()
    await looking

    assert len(near.tier) == 0
    assert near.tier.size == 0
    assert counted(metrics, "lunary_proxy_near_invalidations_total", cause="reset") == 2


async def test_the_tier_stays_under_its_byte_bound_least_recently_used_out_first() -> None:
    body = b"x" * 2048
    keys = [EntryKey(RUN, f"run:s{n}", f"s{n}") for n in range(9)]
    one = len(body) + len("application/json") + len(keys[0].name) + ENTRY_OVERHEAD
    inner, near, _, metrics = parts(max_bytes=8 * one)
    for key in keys:
        await inner.save(key, entry(body))
    for key in keys[:8]:
        await read(near, key)
    await read(near, keys[0])  # used again: the oldest is now keys[1]

    await read(near, keys[8])
    inner.lookups = 0
    for key in (keys[0], *keys[2:]):
        await read(near, key)

    assert len(near.tier) == 8
    assert near.tier.size <= 8 * one
    assert inner.lookups == 0
    assert counted(metrics, "lunary_proxy_near_evictions_total") == 1
    assert counted(metrics, "lunary_proxy_near_bytes") == near.tier.size


async def test_a_body_too_large_for_its_share_of_the_bound_is_not_kept() -> None:
    inner, near, _, _ = parts(max_bytes=64 * 1024)
    await inner.save(KEY, entry(b"x" * 9000))  # over an eighth of the bound

    await read(near, KEY)
    await read(near, KEY)

    assert inner.lookups == 2
    assert len(near.tier) == 0


async def test_a_store_failure_drops_the_entry_and_is_raised() -> None:
    _inner, near, clock, _ = parts(inner=FailingStore())
    near.tier.keep(KEY, entry(), near.tier.ticket())
    clock.now += 3.0  # past the near TTL: the store must confirm it

    try:
        await read(near, KEY)
    except StoreError:
        failed = True
    else:
        failed = False

    assert failed
    assert len(near.tier) == 0


async def test_a_fill_is_not_kept_until_read_back_from_the_store() -> None:
    inner, near, _, _ = parts()
    found = await near.lead_fill(KEY, "token", 5)
    assert found is not None
    assert found.entry is None

    await near.end_fill(KEY, "token", dataclasses.replace(entry(), generation=found.generation))
    first = await read(near, KEY)
    second = await read(near, KEY)

    assert first.entry is not None
    assert second.entry is first.entry
    assert inner.lookups == 2  # the lock's read and the read back; then the tier


async def test_a_fill_here_replaces_what_the_tier_held_and_lookups_under_way() -> None:
    """A refresh (a client's no-cache) stored a newer entry: the older one is answered no
    more, not even by a lookup that read it just before."""
    inner, near, _, _ = parts()
    await inner.save(KEY, entry(b'{"v": 1}'))
    await inner.save(BOBS, entry(b'{"v": 1}'))
    await read(near, KEY)
    inner.gate = asyncio.Event()
    racing = asyncio.create_task(read(near, BOBS))
    await inner.reached.wait()

    await near.end_fill(KEY, "token", entry(b'{"v": 2}'))
    inner.gate.set()
    await racing
    inner.gate = None
    after = await read(near, KEY)

    assert after.entry is not None
    assert after.entry.body == b'{"v": 2}'
    assert len(near.tier) == 1  # KEY read back; BOBS's answer, read before the fill, refused


async def test_the_near_ttl_runs_from_when_the_lookup_was_sent() -> None:
    """Redis may have read the entry as soon as the lookup reached it: a slow answer does not
    buy the entry more time unconfirmed."""
    inner, near, clock, _ = parts(ttl=3.0)
    await inner.save(KEY, entry())
    inner.gate = asyncio.Event()
    looking = asyncio.create_task(read(near, KEY))
    await inner.reached.wait()
    clock.now += 2.0  # the answer is slow to come back
    inner.gate.set()
    await looking
    inner.gate = None

    clock.now += 0.9
    within = near.peek(KEY)
    clock.now += 0.1
    past = near.peek(KEY)

    assert within is not None
    assert past is None
