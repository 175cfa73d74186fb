"""Invalidations the store missed: sent before it is used again, or a write's run is served old.

A Redis that comes back may still hold the run's entries (a replica promoted by Sentinel, a
healed partition): an invalidation that failed while it was away must land before any read.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from proxy.cache.ports import StoreError, StoreUnavailable
from proxy.core.model import Entry, EntryKey, Lookup
from proxy.ops.metrics import Metrics
from proxy.store.guard import MAX_OWED, GuardedStore
from proxy.store.memory import MemoryStore

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
KEY = EntryKey(RUN, "run:s")
ENTRY = Entry(200, "", b"{}", "application/json", 0, 60, 0)


class AwayStore(MemoryStore):
    """A real memory store whose calls fail while `away` (or only its invalidations, with
    `invalidations_fail`), and whose lookups wait for `gate` when one is set."""

    def __init__(self) -> None:
        super().__init__(max_entries=10)
        self.away = False
        self.invalidations_fail = False
        self.gate: asyncio.Event | None = None
        self.lookups = 0
        self.invalidations = 0
        self.cuts: list[tuple[str, float]] = []

    async def lookup(self, key: EntryKey) -> Lookup:
        self.lookups += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.away:
            raise StoreError("down")
        return await super().lookup(key)

    async def invalidate_run(self, run_id: str, keep_for: float) -> int:
        self.invalidations += 1
        if self.away or self.invalidations_fail:
            raise StoreError("down")
        return await super().invalidate_run(run_id, keep_for)

    async def ping(self) -> None:
        if self.away:
            raise StoreError("down")

    async def declare_cut(self, scope: str, at: float, window: float, keep_for: float) -> None:
        if self.away:
            raise StoreError("down")
        self.cuts.append((scope, at))


@pytest.fixture
async def parts() -> tuple[AwayStore, GuardedStore, list[float]]:
    inner, now = AwayStore(), [0.0]
    guard = GuardedStore(inner, Metrics(CollectorRegistry()), open_for=1.0, clock=lambda: now[0])
    await guard.save(KEY, ENTRY)
    return inner, guard, now


async def missed_invalidation(inner: AwayStore, guard: GuardedStore) -> None:
    """The store goes away, a write's invalidation fails, and the store comes back holding the
    run's entry."""
    inner.away = True
    with pytest.raises(StoreError):
        await guard.invalidate_run(RUN, 10)
    inner.away = False


async def test_a_missed_invalidation_lands_before_the_store_is_read_again(
    parts: tuple[AwayStore, GuardedStore, list[float]],
) -> None:
    inner, guard, now = parts
    await missed_invalidation(inner, guard)
    now[0] = 1.5

    found = await guard.lookup(KEY)

    assert found.entry is None
    assert not guard.is_open
    assert inner.invalidations == 2


async def test_while_the_missed_invalidation_fails_the_store_is_not_read(
    parts: tuple[AwayStore, GuardedStore, list[float]],
) -> None:
    inner, guard, now = parts
    await missed_invalidation(inner, guard)
    inner.invalidations_fail = True  # lookups would answer, with the old entry
    now[0] = 1.5
    with pytest.raises(StoreError):
        await guard.lookup(KEY)
    with pytest.raises(StoreUnavailable):
        await guard.lookup(KEY)
    lookups_meanwhile = inner.lookups
    inner.invalidations_fail = False
    now[0] = 3.0
    found = await guard.lookup(KEY)

    assert lookups_meanwhile == 0
    assert found.entry is None
    assert not guard.is_open


async def test_a_call_in_flight_when_it_was_missed_does_not_close_the_breaker(
    parts: tuple[AwayStore, GuardedStore, list[float]],
) -> None:
    inner, guard, _ = parts
    inner.gate = asyncio.Event()
    in_flight = asyncio.create_task(guard.lookup(KEY))
    await asyncio.sleep(0)  # it is inside the store, waiting
    await missed_invalidation(inner, guard)
    inner.gate.set()
    await in_flight  # answered from before the write: it was sent before it
    inner.gate = None

    assert guard.is_open
    with pytest.raises(StoreUnavailable):
        await guard.lookup(KEY)


async def test_readiness_sends_what_the_store_missed(
    parts: tuple[AwayStore, GuardedStore, list[float]],
) -> None:
    inner, guard, _ = parts
    await missed_invalidation(inner, guard)

    await guard.ping()

    assert not guard.is_open
    assert (await guard.lookup(KEY)).entry is None


async def test_a_missed_cut_is_declared_before_the_store_is_read_again(
    parts: tuple[AwayStore, GuardedStore, list[float]],
) -> None:
    inner, guard, now = parts
    inner.away = True
    for at in (1.8e9, 1.8e9 + 1):  # the newer of one scope's cuts covers the older
        with pytest.raises(StoreError):
            await guard.declare_cut("writer", at, 3, 700)
    inner.away = False
    now[0] = 1.5

    await guard.lookup(KEY)

    assert inner.cuts == [("writer", 1.8e9 + 1)]
    assert not guard.is_open


async def test_a_fill_of_a_run_whose_invalidation_is_owed_stores_nothing(
    parts: tuple[AwayStore, GuardedStore, list[float]],
) -> None:
    """It may have read the run from before the write: the promoted node must not get it."""
    inner, guard, _ = parts
    await missed_invalidation(inner, guard)
    fresher = Entry(200, "", b'{"new": false}', "application/json", 1, 60, 0)

    await guard.end_fill(KEY, "token", fresher)

    assert (await inner.lookup(KEY)).entry == ENTRY  # what was there, not the fill's answer


async def test_past_the_most_owed_the_oldest_is_dropped_with_one_warning(
    parts: tuple[AwayStore, GuardedStore, list[float]], caplog: pytest.LogCaptureFixture
) -> None:
    inner, guard, _ = parts
    inner.away = True
    runs = [f"run-{n}" for n in range(MAX_OWED + 2)]
    with caplog.at_level(logging.WARNING, logger="proxy.store"):
        for run in runs:
            with pytest.raises(StoreError):
                await guard.invalidate_run(run, 10)

    assert len(guard._owed) == MAX_OWED
    assert runs[0] not in guard._owed
    assert runs[1] not in guard._owed
    assert runs[-1] in guard._owed
    assert [r.getMessage() for r in caplog.records].count(
        "too many invalidations missed while the store was away: the oldest runs' entries "
        "will live until their TTL"
    ) == 1
