"""Dropping the runs of a write Lunary applies after answering (an OTLP export) again, later.

A read between the answer and Lunary's own write caches a run as it was; a later drop replaces
it. Measured on a real Lunary on loopback: a span is applied 0.09 s after the answer, 50 spans
0.5 s, 200 spans 1.7 s, 512 (an exporter's batch) 3.5 s; 1,000 (the most the proxy reads)
would take about 7 s. So each run is dropped again DROPS_AGAIN_AFTER the answer: doubling gaps
keep the extra drops few.

One scheduler per process, not a task per export: runs wait in rounds by due time (rounded up
to ROUND, so exports close together share one), one worker drops each round when it is due,
and at most MAX_PENDING run ids wait. Past that, `schedule` says no and the caller cuts: an
exporter flood (the route needs no key) costs bounded memory and store calls, never a pile of
tasks. Best effort: the drops still waiting at shutdown are not made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection

log = logging.getLogger("proxy.cache.invalidation")

DROPS_AGAIN_AFTER = (1.0, 2.0, 4.0, 8.0, 16.0)
MAX_PENDING = 10_000  # run ids waiting across every round
ROUND = 0.25  # seconds: the grain of due times


class LaterDrops:
    """Drops runs again DROPS_AGAIN_AFTER they were first dropped, through `drop`."""

    def __init__(
        self,
        drop: Callable[[Collection[str]], Awaitable[None]],
        after: tuple[float, ...] = DROPS_AGAIN_AFTER,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._drop = drop
        self._after = after
        self._max_pending = max_pending
        self._clock = clock
        self._rounds: dict[tuple[float, int], set[str]] = {}  # (due, stage) -> run ids
        self._pending = 0
        self._woken = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Run ids waiting for a later drop, counted once per round they wait in."""
        return self._pending

    def schedule(self, run_ids: Collection[str]) -> bool:
        """Drop `run_ids` again later; False, scheduling nothing, when that would pass
        max_pending or the scheduler is closed (the caller fails safe)."""
        if self._closed or self._pending + len(run_ids) > self._max_pending:
            return False
        if run_ids and self._after:
            self._add(run_ids, 0, self._clock())
            if self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(
                    self._work(), name="later-drops"
                )
        return True

    async def close(self) -> None:
        """Stop at once: the drops still waiting are not made."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def _add(self, run_ids: Collection[str], stage: int, answered_at: float) -> None:
        due = math.ceil((answered_at + self._after[stage]) / ROUND) * ROUND
        waiting = self._rounds.setdefault((due, stage), set())
        before = len(waiting)
        waiting.update(run_ids)
        self._pending += len(waiting) - before
        self._woken.set()  # the worker may be waiting for a later round

    async def _work(self) -> None:
        try:
            while self._rounds:
                due, stage = min(self._rounds)
                wait = due - self._clock()
                if wait > 0:
                    self._woken.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._woken.wait(), wait)
                    continue
                run_ids = self._rounds.pop((due, stage))
                self._pending -= len(run_ids)
                try:
                    await self._drop(run_ids)
                except Exception:  # a bug, not the store (drop reports that): never silent
                    log.exception("a later drop of runs failed", extra={"runs": len(run_ids)})
                if stage + 1 < len(self._after):
                    self._add(run_ids, stage + 1, due - self._after[stage])
        finally:
            if self._worker is asyncio.current_task():
                self._worker = None
