"""The breaker: after a store failure, skip the store for a while, then probe and resume."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from proxy.cache.ports import StoreError, StoreRefused, StoreUnavailable
from proxy.core.model import Entry, EntryKey, Lookup
from proxy.ops.metrics import Metrics
from proxy.store.guard import GuardedStore
from proxy.store.memory import MemoryStore

KEY = EntryKey("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "run:s")


class FlakyStore(MemoryStore):
    """A real memory store that fails while `failing` is set, and counts the calls it gets."""

    def __init__(self) -> None:
        super().__init__(max_entries=10)
        self.failing = False
        self.refusing_writes = False  # as Redis out of memory under noeviction
        self.calls = 0

    async def lookup(self, key: EntryKey) -> Lookup:
        self.calls += 1
        if self.failing:
            raise StoreError("down")
        return await super().lookup(key)

    async def save(self, key: EntryKey, entry: Entry) -> None:
        self.calls += 1
        if self.failing:
            raise StoreError("down")
        if self.refusing_writes:
            raise StoreRefused("OOM command not allowed")
        await super().save(key, entry)

    async def ping(self) -> None:
        self.calls += 1
        if self.failing:
            raise StoreError("down")


@pytest.fixture
def parts() -> tuple[FlakyStore, GuardedStore, list[float], Metrics]:
    inner, now = FlakyStore(), [0.0]
    metrics = Metrics(CollectorRegistry())
    return inner, GuardedStore(inner, metrics, open_for=1.0, clock=lambda: now[0]), now, metrics


async def test_failure_opens_the_breaker_and_later_calls_skip_the_store(
    parts: tuple[FlakyStore, GuardedStore, list[float], Metrics],
) -> None:
    inner, guard, _, metrics = parts
    inner.failing = True

    with pytest.raises(StoreError):
        await guard.lookup(KEY)
    with pytest.raises(StoreUnavailable):
        await guard.lookup(KEY)
    with pytest.raises(StoreUnavailable):
        await guard.save(KEY, Entry(200, "", b"", "", 0, 1, 0))

    assert guard.is_open
    assert inner.calls == 1
    assert metrics.registry.get_sample_value("lunary_proxy_store_breaker_open") == 1
    assert (
        metrics.registry.get_sample_value(
            "lunary_proxy_store_errors_total", {"operation": "lookup", "cause": "other"}
        )
        == 1
    )


async def test_after_the_interval_one_probe_closes_the_breaker(
    parts: tuple[FlakyStore, GuardedStore, list[float], Metrics],
) -> None:
    inner, guard, now, metrics = parts
    inner.failing = True
    with pytest.raises(StoreError):
        await guard.lookup(KEY)

    now[0] = 1.5  # the interval passed, but the store still fails: the probe re-opens
    with pytest.raises(StoreError):
        await guard.lookup(KEY)
    with pytest.raises(StoreUnavailable):
        await guard.lookup(KEY)
    inner.failing = False
    now[0] = 3.0
    found = await guard.lookup(KEY)

    assert found.entry is None
    assert not guard.is_open
    assert inner.calls == 3
    assert metrics.registry.get_sample_value("lunary_proxy_store_breaker_open") == 0


async def test_ping_always_asks_the_store_and_closes_on_success(
    parts: tuple[FlakyStore, GuardedStore, list[float], Metrics],
) -> None:
    inner, guard, _, _ = parts
    inner.failing = True
    with pytest.raises(StoreError):
        await guard.lookup(KEY)
    inner.failing = False

    await guard.ping()

    assert not guard.is_open
    assert await guard.lookup(KEY) == Lookup(None, 0)


async def test_a_refused_write_is_counted_reads_go_on_and_writes_pause(
    parts: tuple[FlakyStore, GuardedStore, list[float], Metrics],
) -> None:
    inner, guard, now, metrics = parts
    inner.refusing_writes = True
    entry = Entry(200, "", b"", "", 0, 1, 0)

    with pytest.raises(StoreRefused):
        await guard.save(KEY, entry)
    found = await guard.lookup(KEY)
    with pytest.raises(StoreRefused):
        await guard.save(KEY, entry)  # not even tried
    now[0] = 4.9
    with pytest.raises(StoreRefused):
        await guard.save(KEY, entry)  # nor at the end of the 5 s pause
    calls_in_pause = inner.calls
    refused_meanwhile = guard.writes_refused
    inner.refusing_writes = False
    now[0] = 5.5
    await guard.save(KEY, entry)  # tried again after the pause

    assert found == Lookup(None, 0)
    assert not guard.is_open
    assert refused_meanwhile
    assert calls_in_pause == 2
    assert not guard.writes_refused
    assert inner.calls == 3
    errors = {"operation": "save", "cause": "other"}  # (a StoreRefused made by the test)
    assert metrics.registry.get_sample_value("lunary_proxy_store_errors_total", errors) == 1
