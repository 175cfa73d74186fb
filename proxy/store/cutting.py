"""A store that applies the fail-safe cuts (proxy/cuts.py) to every entry it returns.

Lookups, and the entry a fill lock reads back, pass through `Cuts.apply`, so no path of the read
driver can hand out an entry the cuts have aged, and the driver itself knows nothing of them.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager

from proxy.cuts import Cuts
from proxy.model import Entry, EntryKey, Lookup
from proxy.ports import WatchedStore


class CuttingStore:
    """A WatchedStore whose lookups see entries as the cuts in force leave them."""

    def __init__(self, inner: WatchedStore, cuts: Cuts) -> None:
        self._inner = inner
        self._cuts = cuts

    @property
    def writes_refused(self) -> bool:
        return self._inner.writes_refused

    async def lookup(self, key: EntryKey) -> Lookup:
        found = await self._inner.lookup(key)
        return self._cut(found, key)

    async def lead_fill(self, key: EntryKey, token: str, lease: float) -> Lookup | None:
        found = await self._inner.lead_fill(key, token, lease)
        return None if found is None else self._cut(found, key)

    def _cut(self, found: Lookup, key: EntryKey) -> Lookup:
        entry = self._cuts.apply(found.entry, key.scope)
        return found if entry is found.entry else Lookup(entry, found.generation)

    async def save(self, key: EntryKey, entry: Entry) -> None:
        await self._inner.save(key, entry)

    async def invalidate_run(self, run_id: str, keep_for: float) -> int:
        return await self._inner.invalidate_run(run_id, keep_for)

    async def declare_cut(self, field: str, at: float, keep_for: float) -> None:
        await self._inner.declare_cut(field, at, keep_for)

    async def read_cuts(self) -> dict[str, float]:
        return await self._inner.read_cuts()

    async def begin_fill(self, key: EntryKey, token: str, lease: float) -> bool:
        return await self._inner.begin_fill(key, token, lease)

    async def end_fill(self, key: EntryKey, token: str, entry: Entry | None) -> None:
        await self._inner.end_fill(key, token, entry)

    def watch_fill(self, key: EntryKey) -> AbstractContextManager[asyncio.Future[None] | None]:
        return self._inner.watch_fill(key)

    async def cooldown_until(self, bucket: str) -> float:
        return await self._inner.cooldown_until(bucket)

    async def start_cooldown(self, bucket: str, until: float, ttl: float) -> None:
        await self._inner.start_cooldown(bucket, until, ttl)

    async def ping(self) -> None:
        await self._inner.ping()

    async def close(self) -> None:
        await self._inner.close()
