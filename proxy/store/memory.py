"""The embedded store: a bounded in-process LRU, so the proxy runs with no configuration."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager

from proxy.cache.ports import Claim, FillLock, KeptCuts
from proxy.core.model import Entry, EntryKey, Lookup


class MemoryStore:
    """Entries in insertion/use order, evicted least-recently-used past `max_entries`.

    Expiry uses a monotonic clock so wall-clock jumps neither revive nor drop entries.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[EntryKey, tuple[float, Entry]] = OrderedDict()
        self._by_run: dict[str, set[EntryKey]] = {}
        # run -> (until when, generation): fills that read an older generation store dead entries
        self._generations: OrderedDict[str, tuple[float, int]] = OrderedDict()
        # part of every generation: bumped (dropping everything) if a live record must be evicted
        self._epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: EntryKey) -> Entry | None:
        """The memory store is in-process: a live entry is answered without an await."""
        return self._live(key, self._clock())[0]

    async def lookup(self, key: EntryKey) -> Lookup:
        entry, generation = self._live(key, self._clock())
        if entry is None:
            self._drop(key)
        return Lookup(entry, generation)

    def _live(self, key: EntryKey, now: float) -> tuple[Entry | None, int]:
        """The entry under `key` if neither expired nor of an older generation (made most
        recently used), and the run's generation."""
        generation = self._generation(key.run_id, now)
        found = self._entries.get(key)
        if found is None:
            return None, generation
        expires_at, entry = found
        if expires_at <= now or entry.generation != generation:
            return None, generation
        self._entries.move_to_end(key)
        return entry, generation

    async def lookup_or_lead(self, key: EntryKey, token: str, lease: float) -> Claim:
        found = await self.lookup(key)
        # one process: in-process single-flight already made us the only filler (see begin_fill)
        return Claim(found, FillLock.NOT_ASKED if found.entry is not None else FillLock.LED)

    async def save(self, key: EntryKey, entry: Entry) -> None:
        if entry.kept_for <= 0:
            return
        self._entries[key] = (self._clock() + entry.kept_for, entry)
        self._entries.move_to_end(key)
        self._by_run.setdefault(key.run_id, set()).add(key)
        while len(self._entries) > self._max_entries:
            self._drop(next(iter(self._entries)))

    async def invalidate_run(self, run_id: str, keep_for: float) -> int:
        now = self._clock()
        generation = self._generation(run_id, now) + 1
        self._generations[run_id] = (now + keep_for, generation)
        self._generations.move_to_end(run_id)
        if len(self._generations) > 4 * self._max_entries:
            self._generations = OrderedDict(
                (run, value) for run, value in self._generations.items() if value[0] > now
            )
            if len(self._generations) > 4 * self._max_entries:
                # forgetting a live generation could revive a fill from before its write: start
                # a new epoch instead, which makes every entry and fill in flight a miss
                self._epoch += 1
                self._generations.clear()
                self._entries.clear()
                self._by_run.clear()
                return 0
        dropped = list(self._by_run.get(run_id, ()))
        for key in dropped:
            self._drop(key)
        return len(dropped)

    def _generation(self, run_id: str, now: float) -> int:
        epoch = self._epoch << 32
        found = self._generations.get(run_id)
        if found is None:
            return epoch
        if found[0] <= now:
            del self._generations[run_id]
            return epoch
        return epoch | (found[1] & 0xFFFFFFFF)

    def _drop(self, key: EntryKey) -> None:
        self._entries.pop(key, None)
        keys = self._by_run.get(key.run_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_run[key.run_id]

    async def declare_cut(self, scope: str, at: float, window: float, keep_for: float) -> None:
        """Nothing to share: the process that made the cut holds it (proxy/core/cuts.py)."""

    async def read_cuts(self) -> KeptCuts:
        return KeptCuts(0.0, {})

    async def begin_fill(self, key: EntryKey, token: str, lease: float) -> bool:
        return True  # one process: in-process single-flight already made us the only filler

    async def lead_fill(self, key: EntryKey, token: str, lease: float) -> Lookup | None:
        return await self.lookup(key)  # always the leader here (see begin_fill)

    async def end_fill(self, key: EntryKey, token: str, entry: Entry | None) -> None:
        if entry is not None:
            await self.save(key, entry)

    def watch_fill(self, key: EntryKey) -> AbstractContextManager[asyncio.Future[None] | None]:
        return contextlib.nullcontext(None)

    async def cooldown_until(self, bucket: str) -> float:
        return 0.0  # cooldowns live in the process (proxy.cache.cooldowns) when nothing is shared

    async def start_cooldown(self, bucket: str, until: float, ttl: float) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
