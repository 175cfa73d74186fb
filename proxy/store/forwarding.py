"""A WatchedStore that passes every call to the store it wraps: the base of the wrappers that
change a few calls (the cuts, store/cutting.py; the in-process tier, store/near.py)."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager

from proxy.cache.ports import Claim, KeptCuts, WatchedStore
from proxy.core.model import Entry, EntryKey, Lookup


class ForwardingStore:
    """Every Store call, and `writes_refused`, as the wrapped store answers it."""

    def __init__(self, inner: WatchedStore) -> None:
        self._inner = inner

    @property
    def writes_refused(self) -> bool:
        return self._inner.writes_refused

    def peek(self, key: EntryKey) -> Entry | None:
        return self._inner.peek(key)

    async def lookup(self, key: EntryKey) -> Lookup:
        return await self._inner.lookup(key)

    async def lookup_or_lead(self, key: EntryKey, token: str, lease: float) -> Claim:
        return await self._inner.lookup_or_lead(key, token, lease)

    async def lead_fill(self, key: EntryKey, token: str, lease: float) -> Lookup | None:
        return await self._inner.lead_fill(key, token, lease)

    async def save(self, key: EntryKey, entry: Entry) -> None:
        await self._inner.save(key, entry)

    async def invalidate_run(self, run_id: str, keep_for: float) -> int:
        return await self._inner.invalidate_run(run_id, keep_for)

    async def declare_cut(self, scope: str, at: float, window: float, keep_for: float) -> None:
        await self._inner.declare_cut(scope, at, window, keep_for)

    async def read_cuts(self) -> KeptCuts:
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
