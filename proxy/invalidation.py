"""Dropping a run's cached entries after writes, ingests and admin purges."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson

from proxy.metrics import Metrics
from proxy.ports import Store, StoreError
from proxy.runs import ingest_targets

log = logging.getLogger("proxy.invalidation")


class Invalidator:
    """Drops every entry of a run (all scopes, both routes) in one store call per run."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        keep_for: float,
        on_dropped: Callable[[str], None] = lambda run_id: None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._on_dropped = on_dropped
        # the generation must outlive every entry written under an older one, including a
        # fill that read the old generation and lands up to one upstream timeout later
        self._keep_for = keep_for

    async def run(self, run_id: str, source: str) -> bool:
        """Drop `run_id`'s entries; False (logged and counted) when the store failed."""
        self._on_dropped(run_id)
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

    async def ingest(self, body: bytes) -> None:
        """Drop the runs an ingest body names: every runId, and every parentRunId's too.

        Deeper ancestors' `/related` entries are left to their TTL.
        """
        try:
            targets = ingest_targets(orjson.loads(body))
        except orjson.JSONDecodeError:
            targets = None
        if targets is None:
            self._metrics.ingest_unparsed()
            return
        runs, parents = targets
        # all at once: a slow store then costs one store timeout, not one per run
        await asyncio.gather(*(self.run(run_id, "ingest") for run_id in sorted(runs | parents)))
