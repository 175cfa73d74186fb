"""The embedded store: a bounded in-process LRU, so the proxy runs with no configuration."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager

from proxy.model import Entry, EntryKey, Lookup


class MemoryStore:
    """Entries in insertion/use order, evicted least-recently-used past `max_entries`.

    Expiry uses a monotonic clock so wall-clock jumps neither revive nor drop entries.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[EntryKey, tuple[float, Entry]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(self, key: EntryKey) -> Lookup:
        found = self._entries.get(key)
        if found is None:
            return Lookup(None, 0)
        expires_at, entry = found
        if expires_at <= self._clock():
            del self._entries[key]
            return Lookup(None, 0)
        self._entries.move_to_end(key)
        return Lookup(entry, 0)

    async def save(self, key: EntryKey, entry: Entry) -> None:
        if entry.kept_for <= 0:
            return
        self._entries[key] = (self._clock() + entry.kept_for, entry)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def begin_fill(self, key: EntryKey, token: str, lease: float) -> bool:
        return True  # one process: in-process single-flight already made us the only filler

    async def end_fill(self, key: EntryKey, token: str, entry: Entry | None) -> None:
        if entry is not None:
            await self.save(key, entry)

    def watch_fill(self, key: EntryKey) -> AbstractContextManager[asyncio.Future[None] | None]:
        return contextlib.nullcontext(None)

    async def cooldown_until(self, bucket: str) -> float:
        return 0.0  # cooldowns live in the process (proxy.ratelimit) when nothing is shared

    async def start_cooldown(self, bucket: str, until: float, ttl: float) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
