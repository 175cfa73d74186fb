"""Dropping a run's cached entries after writes, ingests and admin purges; and, after a write it
cannot read, the fail-safe cut (proxy/core/cuts.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from proxy.cache.later_drops import DROPS_AGAIN_AFTER, LaterDrops
from proxy.cache.ports import Store, StoreError
from proxy.core.cuts import Cuts
from proxy.ingest.forms import IngestForm
from proxy.ingest.reader import Unreadable, UnreadableBody
from proxy.ops.metrics import Metrics

log = logging.getLogger("proxy.cache.invalidation")
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
        drop_again_after: tuple[float, ...] = DROPS_AGAIN_AFTER,
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
        # the runs of writes Lunary applies after answering, dropped again later
        self._later = LaterDrops(self._drop_all, after=drop_again_after)
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
        error = await self._drop(run_id, source)
        if error is not None:
            log.warning(
                "could not drop a run's entries; they live until their TTL",
                extra={"run_id": run_id, "source": source, "error": error},
            )
        return error is None

    async def close(self) -> None:
        """Stop the later drops still waiting (best effort: they are not made)."""
        await self._later.close()

    async def _drop(self, run_id: str, source: str) -> str | None:
        """Drop one run's entries, counted; the store's error, if it failed."""
        try:
            await self._store.invalidate_run(run_id, self._keep_for)
        except StoreError as exc:
            self._metrics.invalidation(source, ok=False)
            return str(exc)
        self._metrics.invalidation(source, ok=True)
        return None

    async def ingest(self, form: IngestForm, body: bytes, scope: str) -> None:
        """Drop the runs an ingest body names: every runId and parentRunId of its events, or
        every run its OTLP spans and log records become.

        The body is read a slice at a time, yielding to the loop between slices, keeping only
        the ids it finds (at most ingest.MAX_RUNS); what cannot be read is a cut. Deeper
        ancestors' `/related` entries are left to their TTL. When Lunary applies the write
        after answering, the runs are dropped again `drop_again_after` seconds later (or, when
        too many runs wait for that already, a cut is made instead).
        """
        reader = form.reader(body)
        try:
            for _ in reader.slices():
                await asyncio.sleep(0)
        except UnreadableBody as exc:
            await self.unreadable(exc.reason, scope)
            return
        await self._drop_all(reader.run_ids)
        if form.applied_after_answer and not self._later.schedule(reader.run_ids):
            await self.cut("later_drops_full", scope)

    async def _drop_all(self, run_ids: Collection[str]) -> None:
        """Drop many runs, a few at a time, with one warning for those the store failed."""
        self._on_dropped(run_ids)  # one pass over the fills under way, for all of them
        # together, a few at a time: a slow store costs a store timeout or two, not one per
        # run, and a body of many runs does not queue a thousand calls for the pool at once
        slots = asyncio.Semaphore(DROPS_AT_ONCE)

        async def drop(run_id: str) -> str | None:
            async with slots:
                return await self._drop(run_id, "ingest")

        errors = [e for e in await asyncio.gather(*map(drop, sorted(run_ids))) if e is not None]
        if errors:
            log.warning(
                "could not drop runs' entries; they live until their TTL",
                extra={"runs": len(errors), "source": "ingest", "error": errors[0]},
            )

    async def unreadable(self, reason: Unreadable, scope: str) -> None:
        """Fail safe after an ingest whose body the proxy could not read: a cut, counted in
        ingest_unparsed too."""
        self._metrics.ingest_unparsed()
        await self.cut(reason.value, scope)

    async def cut(self, reason: str, scope: str) -> None:
        """Fail safe after a write that may have changed runs we could not tell: cut every
        entry stored before now (the writer's become misses, everyone else's are fresh for at
        most the active-run TTL and never stale), count it, warn at most once a minute (never
        any of the body), and share the cut with every replica through the store."""
        at = self._wall_clock()
        self._cuts.cut(scope, at)
        self._on_cut()
        self._metrics.cut(reason)
        now = self._clock()
        last = self._unreadable_logged_at
        if last is None or now - last >= UNREADABLE_LOG_EVERY:
            log.warning(
                "a write may have changed runs the proxy cannot name: entries stored before it "
                "are cut",
                extra={"reason": reason, "unlogged_since": self._unreadable_unlogged},
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
