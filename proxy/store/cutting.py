"""Applying the fail-safe cuts (proxy/core/cuts.py) to every entry a lookup returns, and keeping
this process's cuts in step with the other replicas'.

Lookups (those that may take the fill lock too), and the entry a fill lock reads back, pass
through `Cuts.apply`, so no path of the read driver can hand out an entry the cuts have aged,
and the driver itself knows nothing of them.
Another replica's cut arrives on pub/sub; while this process's listener is away it may miss
some, so until it has subscribed again and read back the cuts the store keeps, nothing is
answered from the store (every lookup is a miss; fills are still stored).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from proxy.cache.ports import Claim, Store, StoreError, WatchedStore
from proxy.core.cuts import Cuts
from proxy.core.model import Entry, EntryKey, Lookup
from proxy.store.forwarding import ForwardingStore

log = logging.getLogger("proxy.store")
# seconds between tries to read the kept cuts back while the store is away. Short: a try against
# the open breaker fails at once, with no round trip (and the breaker lets one call through a
# second), and until the read back lands every lookup is a miss. At 1 s, a listener back just
# after a failover kept the store answering nothing for up to a second more (1.7-3.2 s after a
# Sentinel promotion, where the store itself answered after 1 s).
READ_BACK_RETRY = 0.1


class CuttingStore(ForwardingStore):
    """A WatchedStore whose lookups see entries as the cuts in force leave them."""

    def __init__(
        self, inner: WatchedStore, cuts: Cuts, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(inner)
        self._cuts = cuts
        self._clock = clock
        self.in_step = True  # False while cuts of other replicas may have been missed

    def peek(self, key: EntryKey) -> Entry | None:
        entry = self._inner.peek(key)
        if entry is None or not self.in_step:
            return None
        return self._cuts.apply(entry, key.scope, self._clock())

    async def lookup(self, key: EntryKey) -> Lookup:
        return self._cut(await self._inner.lookup(key), key)

    async def lookup_or_lead(self, key: EntryKey, token: str, lease: float) -> Claim:
        claim = await self._inner.lookup_or_lead(key, token, lease)
        found = self._cut(claim.found, key)
        return claim if found is claim.found else Claim(found, claim.lock)

    async def lead_fill(self, key: EntryKey, token: str, lease: float) -> Lookup | None:
        found = await self._inner.lead_fill(key, token, lease)
        return None if found is None else self._cut(found, key)

    def _cut(self, found: Lookup, key: EntryKey) -> Lookup:
        if not self.in_step:
            return Lookup(None, found.generation)
        entry = self._cuts.apply(found.entry, key.scope, self._clock())
        return found if entry is found.entry else Lookup(entry, found.generation)


class CutListener:
    """What the pub/sub listener does with cuts: learn each one announced, and after it lost
    the announcements, keep the store out of step until the kept cuts are read back."""

    def __init__(
        self, store: Store, cutting: CuttingStore, cuts: Cuts, forget_all: Callable[[], None]
    ) -> None:
        self._store = store
        self._cutting = cutting
        self._cuts = cuts
        self._forget_all = forget_all
        self._lost = 0  # how many times the announcements were lost: a read back must be newer

    def heard(self, scope: str, at: float) -> None:
        """A cut announced by another replica (or this one): fills under way are joined no
        more."""
        self._cuts.cut(scope, at)
        self._forget_all()

    def lost(self) -> None:
        self._lost += 1
        self._cutting.in_step = False

    async def catch_up(self) -> None:
        """Subscribed (again): read back the cuts kept, retrying while the store is away."""
        lost = self._lost
        while True:
            try:
                kept = await self._store.read_cuts()
            except StoreError:
                await asyncio.sleep(READ_BACK_RETRY)
                continue
            if lost != self._lost:  # lost again meanwhile: a later catch-up reads them
                return
            self._cuts.expire_before(kept.expired_before)
            for scope, at in kept.recent.items():
                self._cuts.cut(scope, at)
            self._forget_all()
            self._cutting.in_step = True
            return
