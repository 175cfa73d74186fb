"""Cooldowns: shared through the store, and a bucket found clear is trusted for CLEAR_FOR."""

from __future__ import annotations

import pytest

from proxy.cache.cooldowns import CLEAR_FOR, Cooldowns, RateLimited
from proxy.store.memory import MemoryStore


class CountingStore(MemoryStore):
    """The memory store, sharing cooldowns as Redis does between replicas, counting reads."""

    def __init__(self, max_entries: int) -> None:
        super().__init__(max_entries)
        self.reads = 0
        self.shared: dict[str, float] = {}

    async def cooldown_until(self, bucket: str) -> float:
        self.reads += 1
        return self.shared.get(bucket, 0.0)

    async def start_cooldown(self, bucket: str, until: float, ttl: float) -> None:
        self.shared[bucket] = until


async def test_a_clear_bucket_is_read_from_the_store_once_a_second() -> None:
    store = CountingStore(100)
    cooldowns = Cooldowns(store)
    for step in range(50):
        await cooldowns.check("198.51.100.7", 1000.0 + step * 0.01)  # half a second of misses
    assert store.reads == 1
    await cooldowns.check("198.51.100.7", 1000.0 + CLEAR_FOR + 0.01)
    assert store.reads == 2


async def test_another_replicas_cooldown_arrives_within_clear_for() -> None:
    store = CountingStore(100)
    here, there = Cooldowns(store), Cooldowns(store)
    await here.check("198.51.100.7", 1000.0)  # clear, and remembered as clear
    await there.start("198.51.100.7", 30, 1000.1)  # the other replica met a 429
    await here.check("198.51.100.7", 1000.2)  # still trusting its clear reading
    with pytest.raises(RateLimited):
        await here.check("198.51.100.7", 1000.0 + CLEAR_FOR + 0.01)
    with pytest.raises(RateLimited):  # a bucket it never read: at once
        await Cooldowns(store).check("198.51.100.7", 1000.2)


async def test_its_own_429_cools_the_bucket_down_at_once() -> None:
    cooldowns = Cooldowns(CountingStore(100))
    await cooldowns.check("198.51.100.7", 1000.0)
    await cooldowns.learn(429, [(b"retry-after", b"5")], "198.51.100.7", 1000.1)
    with pytest.raises(RateLimited) as limited:
        await cooldowns.check("198.51.100.7", 1000.2)
    assert 4.8 <= limited.value.remaining <= 5
