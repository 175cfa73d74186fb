"""One fetch per key across replicas: the store's fill lock, led, followed or skipped.

Each kind of fill has its own entry point, so every call site says what it does: a foreground
fill leads or follows the replica holding the lock, a background refresh leads or skips, and a
request that already waited its coalesce timeout fetches alone. A foreground fill after a cold
miss starts from what its lookup already did about the lock (lookup.py): led or held.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass

from proxy.cache.fill import Fill, Filled, Filler
from proxy.cache.ports import FillLock, StoreError, WatchedStore
from proxy.core.model import Entry
from proxy.ops.metrics import Metrics

# How often a waiter on another replica's fill looks at the store even without a notice: a
# safety net for a lost pub/sub message, not the wake-up path.
RECHECK_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class Coordination:
    """How long fills may hold the cross-replica lock, and waiters may wait for another's fill."""

    lock_lease: float
    coalesce_timeout: float


@dataclass(frozen=True, slots=True)
class Led:
    """The fill is ours to fetch, holding `token` (None: the store could not coordinate, and the
    in-process single-flight alone holds)."""

    token: str | None


@dataclass(frozen=True, slots=True)
class Held:
    """Another replica holds the fill lock, and we are flagged as its waiter; `token` is the one
    this fill would take it with."""

    token: str


def claimed(lock: FillLock, token: str) -> Led | Held | None:
    """What a lookup that asked with `token` left this request holding (None: nothing yet)."""
    if lock is FillLock.LED:
        return Led(token)
    if lock is FillLock.HELD:
        return Held(token)
    return None


@dataclass(frozen=True, slots=True)
class _Waited:
    """The wait for another replica ended without its entry: fetch now, holding `token` (the lock
    came free and is ours) or without the lock (None: the wait timed out or the store failed)."""

    token: str | None


class ReplicaFills:
    """The three ways a fill meets the other replicas' fills of the same key."""

    def __init__(
        self,
        store: WatchedStore,
        filler: Filler,
        metrics: Metrics,
        coordination: Coordination,
    ) -> None:
        self._store = store
        self._filler = filler
        self._metrics = metrics
        self._coordination = coordination

    async def lead_or_follow(self, fill: Fill, looked: Led | Held | None = None) -> Filled:
        """A foreground fill: fetch under the key's fill lock, or wait (bounded) for the replica
        holding it and take its entry. `looked` is what the request's lookup did about the lock:
        took it (Led), found it held and flagged us (Held), or nothing (None: claim it now)."""
        if isinstance(looked, Led):  # the cooldown is checked holding it: a 429 gives it back
            return await self._filler.check_and_fetch(fill, looked.token)
        await self._filler.check_cooldown(fill)
        if not fill.use_store:
            return await self._filler.fetch_and_keep(fill, None)
        with self._store.watch_fill(fill.key) as landed:
            held = looked or await self._claim(fill)
            claim = await self._follow(fill, held, landed) if isinstance(held, Held) else held
        if isinstance(claim, Filled):
            return claim
        if isinstance(claim, _Waited):
            return await self._filler.check_and_fetch(fill, claim.token)
        return await self._filler.fetch_and_keep(fill, claim.token)

    async def give_back(self, fill: Fill, looked: Led | Held | None) -> None:
        """The request's lookup took the lock, but it joins a fill already under way here."""
        if isinstance(looked, Led):
            await self._filler.release(fill.key, looked.token)

    async def lead_or_skip(self, fill: Fill) -> Filled:
        """A background refresh: fetch under the key's fill lock; if another replica holds it,
        its fill refreshes the entry and this one ends with nothing fetched."""
        await self._filler.check_cooldown(fill)
        if not fill.use_store:
            return await self._filler.fetch_and_keep(fill, None)
        with self._store.watch_fill(fill.key):
            claim = await self._claim(fill)
        if isinstance(claim, Held):
            return Filled(None, None)
        if isinstance(claim, Filled):
            return claim
        return await self._filler.fetch_and_keep(fill, claim.token)

    async def fetch_alone(self, fill: Fill) -> Filled:
        """Fetch at once without the lock: for a request that already waited its coalesce
        timeout, or whose leader met a 429 of another rate bucket."""
        await self._filler.check_cooldown(fill)
        return await self._filler.fetch_and_keep(fill, None)

    async def _claim(self, fill: Fill) -> Led | Held | Filled:
        """Take the fill lock, unless another replica holds it or already stored the entry."""
        mine = secrets.token_hex(8)
        try:
            current = await self._store.lead_fill(fill.key, mine, self._coordination.lock_lease)
        except StoreError:
            return Led(None)  # cannot coordinate: in-process single-flight holds
        if current is None:
            return Held(mine)
        stored_meanwhile = self._filler.answering(current, fill)
        if stored_meanwhile is None:
            return Led(mine)
        # another replica stored the entry between our lookup and the lock: the store read it
        # in the same call that gave us the lock
        await self._filler.release(fill.key, mine)
        self._metrics.coalesced("replica")
        return Filled(None, stored_meanwhile)

    async def _follow(
        self, fill: Fill, held: Held, landed: asyncio.Future[None] | None
    ) -> Filled | _Waited:
        """Wait, bounded, for the replica holding the fill lock: its fresh entry; or the lock, once
        it came free (the leader stored nothing, died, or Redis lost it); or, after the coalesce
        timeout or a store failure, a fetch without the lock."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._coordination.coalesce_timeout
        lease = self._coordination.lock_lease
        try:
            # the lock is released in the same step that stores the entry, so look first
            stored = await self._stored(fill)
            while stored is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await _pause(min(remaining, RECHECK_INTERVAL), landed)
                stored = await self._stored(fill)
                if stored is None and await self._store.begin_fill(fill.key, held.token, lease):
                    return _Waited(held.token)
        except StoreError:
            stored = None
        if stored is not None:
            self._metrics.coalesced("replica")
            return Filled(None, stored)
        self._metrics.coalesced("timeout")
        return _Waited(None)  # the lock is still another replica's: fetch on our own

    async def _stored(self, fill: Fill) -> Entry | None:
        return self._filler.answering(await self._store.lookup(fill.key), fill)


async def _pause(seconds: float, landed: asyncio.Future[None] | None) -> None:
    """Until the holder's notice, at most `seconds`; a notice comes once: after it, recheck
    slowly."""
    if landed is None or landed.done():
        await asyncio.sleep(seconds)
    else:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(landed), seconds)
