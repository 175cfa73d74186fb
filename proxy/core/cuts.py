"""Fail-safe invalidation: cuts that age entries stored before a write the proxy could not read.

A write the proxy passes to Lunary but cannot read (an ingest body it cannot parse, an OTLP
export) may have changed any run. Dropping every entry would be O(entries); instead a cut is one
timestamp, compared with each entry's `stored_at` when it is read:

- every scope: an entry stored before a cut stays fresh for at most the active-run TTL after the
  first cut that followed it, and is never served stale (the bound the proxy already keeps for
  runs still in progress);
- the writer's own scope: entries stored before its cut are misses, so the writer reads its own
  write at once.

So only cuts of the last active-run TTL matter one by one: an entry stored before an older cut
has expired. Those are kept in a short sorted list; older ones fold into one `expired_before`.
A scope's own cut matters only as long, so the scopes kept are bounded by the writers of the
last few seconds. Cuts are made by the replica that forwarded the write, before the writer hears
back, and shared through the store (store/redis.py keeps them and announces each on pub/sub;
store/cutting.py applies them to every entry a lookup returns).
"""

from __future__ import annotations

import bisect
import dataclasses

from proxy.core.model import Entry

# recent cuts (and scope cuts) kept one by one; past this the oldest fold into expired_before,
# which only ever makes entries expire sooner
MAX_RECENT_CUTS = 10_000


class Cuts:
    """The cuts in force in this process; `apply` is on the hit path: one compare without cuts."""

    __slots__ = ("_active_ttl", "_expired_before", "_recent", "_scopes")

    def __init__(self, active_ttl: float) -> None:
        self._active_ttl = active_ttl
        self._expired_before = 0.0  # entries stored before it are past every bound: misses
        self._recent: list[float] = []  # cut times of the last active_ttl, sorted
        self._scopes: dict[str, float] = {}  # scope -> its newest cut, if recent

    def cut(self, scope: str, at: float) -> None:
        """Record the cut of an unreadable write by `scope` at `at` (the wall clock); also what
        another replica announced, or the store kept."""
        if at <= self._expired_before:
            return
        bisect.insort(self._recent, at)
        if at > self._scopes.get(scope, 0.0):
            self._scopes[scope] = at
        if len(self._recent) > MAX_RECENT_CUTS or len(self._scopes) > MAX_RECENT_CUTS:
            self._fold(self._recent[-1])

    def expire_before(self, at: float) -> None:
        """Every entry stored before `at` has expired (the store no longer lists the cuts
        before it one by one)."""
        if at > self._expired_before:
            self._expired_before = at
            self._fold(at)

    def apply(self, entry: Entry | None, scope: str, now: float) -> Entry | None:
        """The entry as the cuts leave it: itself, shortened and never stale, or None (a miss)."""
        if entry is None or entry.stored_at >= self._newest():
            return entry
        self._fold(now - self._active_ttl)
        stored_at = entry.stored_at
        if stored_at < self._expired_before or stored_at < self._scopes.get(scope, 0.0):
            return None
        following = bisect.bisect_right(self._recent, stored_at)
        if following == len(self._recent):
            return entry
        fresh_until = min(stored_at + entry.fresh_for, self._recent[following] + self._active_ttl)
        return dataclasses.replace(entry, fresh_for=max(0.0, fresh_until - stored_at), stale_for=0)

    def _newest(self) -> float:
        return self._recent[-1] if self._recent else self._expired_before

    def _fold(self, before: float) -> None:
        """Cuts up to `before` no longer matter one by one: entries stored before them expired."""
        if not self._recent or self._recent[0] > before:
            return
        folded = bisect.bisect_right(self._recent, before)
        self._expired_before = max(self._expired_before, self._recent[folded - 1])
        del self._recent[:folded]
        self._scopes = {s: at for s, at in self._scopes.items() if at > self._expired_before}
