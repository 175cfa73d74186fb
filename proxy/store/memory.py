"""The embedded store: a bounded in-process LRU, so the proxy runs with no configuration."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

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

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
