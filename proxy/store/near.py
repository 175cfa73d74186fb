"""The in-process tier in front of Redis: hot entries answered without a round trip.

An entry here is only ever one Redis gave a lookup, kept as it came (the same bytes, the same
scope in the key), and trusted while all of these hold:

- the invalidation listener is subscribed and has been heard from within its heartbeat window
  (store/notify.py): while it is away or silent, the tier is bypassed, and it is emptied when
  the listener goes and when it is back, since announcements may have been missed meanwhile;
- no invalidation of the entry's run was heard since the lookup that read it was *sent*: each
  lookup takes a ticket first, and an answer whose run was dropped after the ticket (an
  invalidation racing the round trip, or a fill's) is not kept;
- it was confirmed by Redis within `ttl` seconds (PROXY_NEAR_TTL), and Redis still holds it
  (its own TTL): past either, the next request asks Redis again, so an entry Redis lost (evicted,
  expired, FLUSHALL) is noticed without any announcement.

Fills are not kept from the fill itself: a fill drops what the tier held under its key, and the
next lookup reads it back from Redis, so what the tier holds is exactly what Redis held under the
generation current at that read, and never older than what this process stored. The fail-safe
cuts (core/cuts.py) apply above this tier (store/cutting.py), as to any lookup.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from proxy.cache.ports import Claim, StoreError, WatchedStore
from proxy.core.model import Entry, EntryKey, Lookup
from proxy.ops.metrics import Metrics
from proxy.store.forwarding import ForwardingStore

T = TypeVar("T")
# What one entry costs besides its body, content type and key: the Entry, its slot here, the
# run index; measured by benchmarks/near_memory.py and rounded up.
ENTRY_OVERHEAD = 1400
# One entry may take at most this share of the bound, so a few huge bodies cannot flush it.
LARGEST_SHARE = 8
# Invalidations remembered one by one for the tickets of lookups under way; a ticket older than
# the oldest remembered is refused (an answer is then simply not kept).
REMEMBERED_DROPS = 4096


class Ticket(NamedTuple):
    """Taken when a lookup is sent: the invalidations heard so far, and the time (the entry's
    near TTL runs from the moment Redis may have read it, not from when its answer came)."""

    seq: int
    at: float


@dataclass(slots=True)
class _Kept:
    entry: Entry
    trusted_until: float  # monotonic: confirmed + ttl, or Redis's expiry if sooner
    size: int


class NearTier:
    """The entries, bounded by bytes (least recently used out first), and their coherence
    state: the listener's liveness, and the invalidations heard since each lookup was sent."""

    def __init__(
        self,
        max_bytes: int,
        ttl: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._max_bytes = max_bytes
        self._largest = max_bytes // LARGEST_SHARE
        self._ttl = ttl
        self._metrics = metrics
        self._clock = clock
        self._wall = wall
        self._entries: OrderedDict[EntryKey, _Kept] = OrderedDict()
        self._runs: dict[str, set[EntryKey]] = {}
        self._bytes = 0
        self._seq = 0  # bumped by every invalidation heard
        self._floor = 0  # tickets below it are refused: the tier was reset after they were taken
        self._dropped: OrderedDict[str, int] = OrderedDict()  # run -> seq of its last drop
        # until when (monotonic) the listener counts as alive; set by the listener when it
        # hears anything, 0 until it first subscribes
        self.live_until = 0.0
        self._hit = metrics.near_lookup["hit"]
        self._miss = metrics.near_lookup["miss"]
        self._unconfirmed = metrics.near_lookup["unconfirmed"]
        self._bypass = metrics.near_lookup["bypass"]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._bytes

    def get(self, key: EntryKey) -> Entry | None:
        """The entry under `key` if the tier may answer with it now (the hit path: no I/O)."""
        now = self._clock()
        if now >= self.live_until:
            self._bypass.inc()
            return None
        kept = self._entries.get(key)
        if kept is None:
            self._miss.inc()
            return None
        if now >= kept.trusted_until:
            self._unconfirmed.inc()
            return None
        self._entries.move_to_end(key)
        self._hit.inc()
        return kept.entry

    def ticket(self) -> Ticket:
        """Taken before a lookup is sent; `keep` refuses its answer if the run was dropped
        since."""
        return Ticket(self._seq, self._clock())

    def keep(self, key: EntryKey, entry: Entry, ticket: Ticket) -> None:
        """Keep what Redis answered a lookup sent at `ticket`, if nothing made it doubtful."""
        seq = ticket.seq
        if seq < self._floor or self._dropped.get(key.run_id, -1) > seq:
            return
        if self._clock() >= self.live_until:
            return
        size = len(entry.body) + len(entry.content_type) + len(key.name) + ENTRY_OVERHEAD
        # Redis keeps an entry kept_for seconds from its save, which came after stored_at
        redis_left = entry.stored_at + entry.kept_for - self._wall()
        if size > self._largest or redis_left <= 0:
            self.discard(key)
            return
        self._remove(key)
        trusted_until = min(ticket.at + self._ttl, self._clock() + redis_left)
        self._entries[key] = _Kept(entry, trusted_until, size)
        self._runs.setdefault(key.run_id, set()).add(key)
        self._bytes += size
        self._evict()
        self._metrics.near_size(len(self._entries), self._bytes)

    def discard(self, key: EntryKey) -> None:
        """Redis no longer holds what the tier holds under `key`."""
        if self._remove(key):
            self._metrics.near_dropped["changed"].inc()
            self._metrics.near_size(len(self._entries), self._bytes)

    def replaced(self, key: EntryKey) -> None:
        """This process stored a new entry under `key`: the one held is older, and so may be
        the answer of a lookup of the run under way."""
        self._refuse_under_way(key.run_id)
        self._remove(key)
        self._metrics.near_size(len(self._entries), self._bytes)

    def _refuse_under_way(self, run_id: str) -> None:
        self._seq += 1
        self._dropped[run_id] = self._seq
        self._dropped.move_to_end(run_id)
        if len(self._dropped) > REMEMBERED_DROPS:
            _, forgotten = self._dropped.popitem(last=False)
            self._floor = max(self._floor, forgotten)

    def drop_run(self, run_id: str) -> None:
        """An invalidation of `run_id` was heard (or made here): its entries go, and lookups
        of it under way are not kept."""
        self._refuse_under_way(run_id)
        keys = self._runs.pop(run_id, ())
        for key in keys:
            self._bytes -= self._entries.pop(key).size
        if keys:
            self._metrics.near_dropped["invalidated"].inc(len(keys))
            self._metrics.near_size(len(self._entries), self._bytes)

    def reset(self) -> None:
        """Empty the tier and refuse every lookup under way: announcements may have been lost."""
        self._seq += 1
        self._floor = self._seq
        self._dropped.clear()
        if self._entries:
            self._metrics.near_dropped["reset"].inc(len(self._entries))
        self._entries.clear()
        self._runs.clear()
        self._bytes = 0
        self._metrics.near_size(0, 0)

    def _remove(self, key: EntryKey) -> bool:
        kept = self._entries.pop(key, None)
        if kept is None:
            return False
        self._bytes -= kept.size
        keys = self._runs.get(key.run_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._runs[key.run_id]
        return True

    def _evict(self) -> None:
        evicted = 0
        while self._bytes > self._max_bytes and self._entries:
            key = next(iter(self._entries))
            self._remove(key)
            evicted += 1
        if evicted:
            self._metrics.near_evicted(evicted)


class NearStore(ForwardingStore):
    """A WatchedStore answering from the tier when it may, and keeping what Redis answers."""

    def __init__(self, inner: WatchedStore, tier: NearTier) -> None:
        super().__init__(inner)
        self.tier = tier

    def peek(self, key: EntryKey) -> Entry | None:
        """The tier's answer, with no I/O: None when it has none it may give (ask `lookup`)."""
        return self.tier.get(key)

    async def lookup(self, key: EntryKey) -> Lookup:
        """Redis's answer (the tier was peeked already), kept when nothing made it doubtful."""
        ticket = self.tier.ticket()
        return self._kept(key, ticket, await self._asked(self._inner.lookup(key), key))

    async def lookup_or_lead(self, key: EntryKey, token: str, lease: float) -> Claim:
        ticket = self.tier.ticket()
        claim = await self._asked(self._inner.lookup_or_lead(key, token, lease), key)
        self._kept(key, ticket, claim.found)
        return claim

    async def _asked(self, call: Awaitable[T], key: EntryKey) -> T:
        try:
            return await call
        except StoreError:
            self.tier.discard(key)
            raise

    def _kept(self, key: EntryKey, ticket: Ticket, found: Lookup) -> Lookup:
        if found.entry is None:
            self.tier.discard(key)
        else:
            self.tier.keep(key, found.entry, ticket)
        return found

    async def lead_fill(self, key: EntryKey, token: str, lease: float) -> Lookup | None:
        ticket = self.tier.ticket()
        found = await self._inner.lead_fill(key, token, lease)
        return None if found is None else self._kept(key, ticket, found)

    async def invalidate_run(self, run_id: str, keep_for: float) -> int:
        """Dropped here before Redis is asked (no request from now on is answered from the
        tier) and again after (a lookup sent meanwhile read the old generation)."""
        self.tier.drop_run(run_id)
        try:
            return await self._inner.invalidate_run(run_id, keep_for)
        finally:
            self.tier.drop_run(run_id)

    async def save(self, key: EntryKey, entry: Entry) -> None:
        """A save replaces what the tier held under `key`, as a fill does."""
        try:
            await self._inner.save(key, entry)
        finally:
            self.tier.replaced(key)

    async def end_fill(self, key: EntryKey, token: str, entry: Entry | None) -> None:
        """A fill's entry replaces the one held here; it is read back by the next lookup."""
        try:
            await self._inner.end_fill(key, token, entry)
        finally:
            if entry is not None:
                self.tier.replaced(key)
