"""Fail-safe invalidation: cuts that age entries stored before a write the proxy could not read.

A write the proxy passes to Lunary but cannot read (an ingest body it cannot parse, an encoding
it does not know) may have changed any run. Dropping every entry would be O(entries); instead a
cut is one timestamp, compared with each entry's `stored_at` when it is read:

- the writer's own scope: every entry stored before the cut is a miss, so the writer reads its
  own write at once;
- every other scope: an entry stored before the cut stays fresh for at most the active-run TTL
  after it and is never served stale, the bound the proxy already keeps for runs in progress.

Cuts are made by the replica that forwarded the write, before the writer hears back, and are
shared through the store (store/redis.py keeps them and announces each one on pub/sub; the
store/cutting.py decorator applies them to every entry a lookup returns).
"""

from __future__ import annotations

import dataclasses

from proxy.model import Entry

EVERYONE_MISS = "!"  # the field of a cut that makes every older entry a miss (a flood)
# scopes with a cut of their own; past this the oldest are forgotten and their entries are cut
# as everyone's are, unless that would lose a cut still in force (then everything is a miss)
MAX_SCOPE_CUTS = 10_000


class Cuts:
    """The cuts in force in this process; `apply` is on the hit path, so it is two compares."""

    __slots__ = ("_active_ttl", "_everyone", "_everyone_miss", "_keep_for", "_scopes")

    def __init__(self, active_ttl: float, keep_for: float) -> None:
        self._active_ttl = active_ttl
        self._keep_for = keep_for  # the longest any entry lives: older cuts no longer matter
        self._everyone = 0.0  # entries stored before: fresh until it + active_ttl, never stale
        self._everyone_miss = 0.0  # entries stored before: misses (a flood of scope cuts)
        self._scopes: dict[str, float] = {}

    def cut(self, scope: str, at: float) -> None:
        """Record the cut of an unreadable write by `scope` at `at` (the wall clock)."""
        self._everyone = max(self._everyone, at)
        if at <= self._scopes.get(scope, 0.0):
            return
        if scope not in self._scopes and len(self._scopes) >= MAX_SCOPE_CUTS:
            self._prune(at)
        self._scopes[scope] = at

    def learn(self, field: str, at: float) -> None:
        """A cut announced by a replica (or read back from the store): a scope or EVERYONE_MISS."""
        if field == EVERYONE_MISS:
            self._everyone = max(self._everyone, at)
            self._everyone_miss = max(self._everyone_miss, at)
        else:
            self.cut(field, at)

    def apply(self, entry: Entry | None, scope: str) -> Entry | None:
        """The entry as the cuts leave it: itself, shortened, or None (a miss)."""
        if entry is None or (entry.stored_at >= self._everyone and not self._scopes):
            return entry
        stored_at = entry.stored_at
        if stored_at < self._everyone_miss or stored_at < self._scopes.get(scope, 0.0):
            return None
        if stored_at >= self._everyone:
            return entry
        fresh_until = min(stored_at + entry.fresh_for, self._everyone + self._active_ttl)
        return dataclasses.replace(entry, fresh_for=max(0.0, fresh_until - stored_at), stale_for=0)

    def _prune(self, now: float) -> None:
        live = {s: at for s, at in self._scopes.items() if at > now - self._keep_for}
        if len(live) >= MAX_SCOPE_CUTS:  # a flood of writers, each cut still in force
            self._everyone_miss = max(self._everyone_miss, max(live.values()))
            live.clear()
        self._scopes = live
