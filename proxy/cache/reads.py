"""The one driver of a cached read: recv -> hash -> lookup -> hit | stale | fill -> deliver.

It does I/O only through the Store and Upstream ports and reads the clock once per request.
Each step reads on its own: the request's facts (request.py), the shared lookup (lookup.py), the
fill in this process (follow.py) and across replicas (replicas.py, fill.py), the background
refresh of a stale entry (refresh.py), and the reply from a fill's outcome (outcome.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from proxy.cache import replies
from proxy.cache.cooldowns import Cooldowns
from proxy.cache.fill import Filler
from proxy.cache.follow import Flights
from proxy.cache.lookup import SharedLookups
from proxy.cache.outcome import Plan
from proxy.cache.ports import StoreError, Upstream, WatchedStore
from proxy.cache.refresh import REFRESH_RETRY_AFTER, Refreshes
from proxy.cache.replicas import Coordination, ReplicaFills
from proxy.cache.replies import Reply
from proxy.cache.request import Facts, ReadRequest, fill_for
from proxy.core.headers import Header, client_directives
from proxy.core.model import CacheResult, Entry, EntryKey, Freshness, Judgement, Reason
from proxy.core.paths import normalise_query
from proxy.core.policy import Lifetimes, entry_key, judge
from proxy.core.scope import ScopeHasher
from proxy.ops.metrics import Metrics
from proxy.ops.tasks import TaskSet

__all__ = ["REFRESH_RETRY_AFTER", "CachedReads", "Coordination", "ReadRequest"]


class CachedReads:
    """Serves GET/HEAD on the cached routes from the store, filling misses from the upstream."""

    def __init__(
        self,
        store: WatchedStore,
        upstream: Upstream,
        hasher: ScopeHasher,
        lifetimes: Lifetimes,
        metrics: Metrics,
        tasks: TaskSet,
        cooldowns: Cooldowns,
        coordination: Coordination,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._metrics = metrics
        self._clock = clock
        filler = Filler(store, upstream, lifetimes, metrics, cooldowns, clock)
        fills = ReplicaFills(store, filler, metrics, coordination)
        self._lookups = SharedLookups(store, coordination.lock_lease)
        self._flights = Flights(fills, metrics, tasks, coordination)
        self._refreshes = Refreshes(fills, metrics, tasks, clock)

    def forget_run(self, run_id: str) -> None:
        """After a write to `run_id`: fills and lookups already under way began before it, so
        no request arriving from now on may join them."""

        self._forget(lambda key: key.run_id == run_id)

    def forget_runs(self, run_ids: Collection[str]) -> None:
        """forget_run for many runs, in one pass over what is under way."""
        if len(run_ids) == 1:
            self.forget_run(next(iter(run_ids)))
        elif run_ids:
            self._forget(lambda key: key.run_id in run_ids)

    def forget_all(self) -> None:
        """After a write nobody could read (a fail-safe cut, proxy/core/cuts.py): it may have
        changed any run, so no request from now on joins a fill or lookup under way."""
        self._forget(lambda key: True)

    def _forget(self, matches: Callable[[EntryKey], bool]) -> None:
        self._flights.forget(matches)
        self._refreshes.forget(matches)
        self._lookups.forget(matches)

    def scope_of(self, headers: list[Header]) -> str:
        """The credential scope of a request, read as a cached read of it would read it."""
        facts = Facts.read(headers)
        return self._hasher.scope(facts.authorization, facts.api_key)

    async def serve(self, request: ReadRequest) -> Reply:
        now = self._clock()
        facts = Facts.read(request.headers)
        wants = client_directives(facts.cache_control, facts.pragma)
        key = entry_key(
            request.route,
            self._hasher.scope(facts.authorization, facts.api_key),
            normalise_query(request.query_string),
        )
        leaders = None if wants.no_store else self._flights.leader_plan(key)
        if leaders is not None:
            # a fill of this key is under way here: join it without a store round trip, so a
            # herd costs the store one lookup per process, not one per request
            fill = fill_for(
                request, facts, key, now, leaders.generation, use_store=leaders.use_store
            )
            reply = await self._flights.reply(fill, leaders)
        elif wants.no_store:
            fill = fill_for(request, facts, key, now, generation=0, use_store=False)
            plan = _bypass(fill.bucket, Reason.CLIENT_NO_STORE)
            reply = await self._flights.own_reply(fill, plan)
        else:
            reply = await self._read_through(request, facts, key, now, refresh=wants.no_cache)
        self._metrics.request(request.route.kind.value, reply.cache)
        if facts.if_none_match is not None:
            reply = replies.not_modified_if_matching(reply, facts.if_none_match)
        return reply

    async def _read_through(
        self, request: ReadRequest, facts: Facts, key: EntryKey, now: float, *, refresh: bool
    ) -> Reply:
        """Lookup, then a hit, a stale answer (refreshed behind it), or the fill; `refresh` is
        the client's no-cache: a fresh entry does not answer it."""
        if not refresh and (held := self._store.peek(key)) is not None:
            # answered in this process (the in-process tier, or the memory store): no await
            judgement = judge(held, now)
            if judgement.freshness is Freshness.FRESH:
                return replies.hit(held, judgement)
        try:
            looked = await self._lookups.lookup(key)
        except StoreError:
            fill = fill_for(request, facts, key, now, generation=0, use_store=False)
            return await self._flights.reply(fill, _bypass(fill.bucket, Reason.STORE_UNAVAILABLE))
        found = looked.found
        stale: tuple[Entry, Judgement] | None = None
        if found.entry is not None:  # then the lookup took no lock (Store.lookup_or_lead)
            judgement = judge(found.entry, now)
            if judgement.freshness is Freshness.FRESH and not refresh:
                return replies.hit(found.entry, judgement)
            if judgement.freshness is not Freshness.EXPIRED and found.entry.status == 200:
                stale = (found.entry, judgement)
        seen = found.entry.stored_at if found.entry is not None else 0.0
        fill = fill_for(request, facts, key, now, found.generation, use_store=True, seen=seen)
        # a store refusing writes could keep no refresh, and the stale entry would be served
        # until its window ends with Lunary healthy: it is fetched now (stale if that fails)
        if stale is not None and not refresh and not self._store.writes_refused:
            self._refreshes.start(fill)
            return replies.stale(*stale, Reason.REVALIDATING)
        fwd = "request" if refresh else ("stale" if found.entry is not None else "miss")
        plan = Plan(found.generation, True, fill.bucket, stale, CacheResult.MISS, fwd)
        return await self._flights.reply(fill, plan, looked.claim)


def _bypass(bucket: str, reason: Reason) -> Plan:
    """The plan of a fill that neither reads nor writes the store."""
    return Plan(0, False, bucket, None, CacheResult.BYPASS, "bypass", reason)
