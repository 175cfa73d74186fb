"""The shared lookup step (proxy/cache/lookup.py): a herd in one process makes one store call per
key, and the fill lock that call may take goes to the one request that made it."""

from __future__ import annotations

import asyncio

import pytest

from proxy.cache.lookup import Looked, SharedLookups
from proxy.cache.ports import Claim
from proxy.cache.replicas import Led
from proxy.core.model import EntryKey, Lookup
from proxy.store.memory import MemoryStore

KEY = EntryKey("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "run:s1")


class GatedStore(MemoryStore):
    """A memory store whose lookups wait at a gate (as a round trip would), counted."""

    def __init__(self) -> None:
        super().__init__(max_entries=10)
        self.gate = asyncio.Event()
        self.claims: list[str] = []
        self.plain = 0

    async def lookup_or_lead(self, key: EntryKey, token: str, lease: float) -> Claim:
        self.claims.append(token)
        await self.gate.wait()
        return await super().lookup_or_lead(key, token, lease)

    async def lookup(self, key: EntryKey) -> Lookup:
        self.plain += 1
        return await super().lookup(key)


async def herd(lookups: SharedLookups, size: int) -> list[asyncio.Task[Looked]]:
    tasks = [asyncio.create_task(lookups.lookup(KEY)) for _ in range(size)]
    await asyncio.sleep(0)  # every one of them has asked
    return tasks


async def test_a_herd_makes_one_store_call_and_one_request_holds_the_lock() -> None:
    store = GatedStore()
    lookups = SharedLookups(store, lease=5)
    tasks = await herd(lookups, 16)

    store.gate.set()
    looked = await asyncio.gather(*tasks)

    assert len(store.claims) == 1
    assert [found.claim for found in looked] == [Led(store.claims[0])] + [None] * 15
    assert {found.found for found in looked} == {looked[0].found}


async def test_when_the_first_request_goes_away_the_others_look_up_without_the_lock() -> None:
    store = GatedStore()
    lookups = SharedLookups(store, lease=5)
    first, *others = await herd(lookups, 4)

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    store.gate.set()
    looked = await asyncio.gather(*others)

    assert len(store.claims) == 1  # the cancelled call (the store gives back what it took)
    assert store.plain == 3  # then plain lookups: their fill claims the lock with lead_fill
    assert [found.claim for found in looked] == [None] * 3
