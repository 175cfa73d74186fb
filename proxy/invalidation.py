"""Dropping a run's cached entries after writes, ingests and admin purges; and, after a write it
cannot read, the fail-safe cut (proxy/cuts.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from proxy.cuts import Cuts
from proxy.ingest import IngestReader, Unreadable, UnreadableBody
from proxy.metrics import Metrics
from proxy.ports import Store, StoreError

log = logging.getLogger("proxy.invalidation")
UNREADABLE_LOG_EVERY = 60.0  # seconds between warnings about unreadable ingest bodies
DROPS_AT_ONCE = 32  # invalidations of one ingest in flight together (the Redis pool is 64)


class Invalidator:
    """Drops every entry of a run (all scopes, both routes) in one store call per run."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        keep_for: float,
        cuts: Cuts,
        cut_window: float,
        on_dropped: Callable[[Collection[str]], None] = lambda run_ids: None,
        on_cut: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._on_dropped = on_dropped
        # what an unreadable write costs: a cut, O(1), made here and shared through the store
        self._cuts = cuts
        self._cut_window = cut_window
        self._on_cut = on_cut
        self._clock = clock
        self._wall_clock = wall_clock
        self._unreadable_logged_at: float | None = None
        self._unreadable_unlogged = 0
        # the generation must outlive every entry written under an older one, including a
        # fill that read the old generation and lands up to one upstream timeout later
        self._keep_for = keep_for

    async def run(self, run_id: str, source: str) -> bool:
        """Drop `run_id`'s entries; False (logged and counted) when the store failed."""
        self._on_dropped((run_id,))
        return await self._drop(run_id, source)

    async def _drop(self, run_id: str, source: str) -> bool:
        try:
            await self._store.invalidate_run(run_id, self._keep_for)
        except StoreError as exc:
            self._metrics.invalidation(source, ok=False)
            log.warning(
                "could not drop a run's entries; they live until their TTL",
                extra={"run_id": run_id, "source": source, "error": str(exc)},
            )
            return False
        self._metrics.invalidation(source, ok=True)
        return True

    async def ingest(self, body: bytes, scope: str) -> None:
        """Drop the runs an ingest body names: every runId, and every parentRunId's too.

        The body is read a slice at a time, yielding to the loop between slices, keeping only
        the ids it finds (at most ingest.MAX_RUNS). Deeper ancestors' `/related` entries are
        left to their TTL.
        """
        reader = IngestReader(body)
        try:
            for _ in reader.slices():
                await asyncio.sleep(0)
        except UnreadableBody as exc:
            await self.unreadable(exc.reason, scope)
            return
        self._on_dropped(reader.run_ids)  # one pass over the fills under way, for all of them
        # together, a few at a time: a slow store costs a store timeout or two, not one per
        # run, and a body of many runs does not queue a thousand calls for the pool at once
        slots = asyncio.Semaphore(DROPS_AT_ONCE)

        async def drop(run_id: str) -> None:
            async with slots:
                await self._drop(run_id, "ingest")

        await asyncio.gather(*(drop(run_id) for run_id in sorted(reader.run_ids)))

    async def unreadable(self, reason: Unreadable, scope: str) -> None:
        """Fail safe after a write that may have changed runs we could not tell: cut every
        entry stored before now (the writer's become misses, everyone else's are fresh for at
        most the active-run TTL and never stale), count it, warn at most once a minute (never
        any of the body), and share the cut with every replica through the store."""
        at = self._wall_clock()
        self._cuts.cut(scope, at)
        self._on_cut()
        self._metrics.ingest_unparsed()
        now = self._clock()
        last = self._unreadable_logged_at
        if last is None or now - last >= UNREADABLE_LOG_EVERY:
            log.warning(
                "a write could not be read for invalidation: entries stored before it are cut",
                extra={"reason": reason.value, "unlogged_since": self._unreadable_unlogged},
            )
            self._unreadable_logged_at, self._unreadable_unlogged = now, 0
        else:
            self._unreadable_unlogged += 1
        try:
            await self._store.declare_cut(scope, at, self._cut_window, self._keep_for)
        except StoreError as exc:  # this replica holds it; the guard sends it once Redis is back
            log.warning(
                "could not share a cut with the other replicas; sent once the store answers",
                extra={"error": str(exc)},
            )
