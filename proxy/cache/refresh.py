"""The background refresh of a stale entry: one per key, held back for a while after a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from proxy.cache.coalesce import SingleFlight
from proxy.cache.cooldowns import RateLimited
from proxy.cache.fill import Fill, Filled, close_unread_body, upstream_failed
from proxy.cache.ports import UpstreamError
from proxy.cache.replicas import ReplicaFills
from proxy.core.deadlines import Deadlines
from proxy.core.model import EntryKey
from proxy.ops.metrics import Metrics
from proxy.ops.tasks import TaskSet

# After a background refresh failed (Lunary down, 5xx, 429), the key's stale entry is served
# without another refresh for this long: else every read during an outage sends one more
# request to a failing upstream. Bounded in keys, as everything a client can grow.
REFRESH_RETRY_AFTER = 2.0
MAX_REFRESH_BACKOFFS = 10_000


class Refreshes:
    """Background refreshes of stale entries, while the stale entry answers at once."""

    def __init__(
        self,
        fills: ReplicaFills,
        metrics: Metrics,
        tasks: TaskSet,
        clock: Callable[[], float],
    ) -> None:
        self._fills = fills
        self._metrics = metrics
        self._tasks = tasks
        self._clock = clock
        self._running: SingleFlight[EntryKey, Filled, None] = SingleFlight(tasks)
        # key -> when a refresh may run again; a flood of failing keys is forgotten whole
        self._failed: Deadlines[EntryKey] = Deadlines(MAX_REFRESH_BACKOFFS, MAX_REFRESH_BACKOFFS)

    def forget(self, matches: Callable[[EntryKey], bool]) -> None:
        """Detach the refreshes of matching keys: a read after a write starts its own."""
        self._running.forget(matches)

    def start(self, fill: Fill) -> None:
        """One refresh per key: skipped when this process or another replica already runs one,
        and for REFRESH_RETRY_AFTER after one failed."""
        if self._running.running(fill.key):
            return
        if fill.now < self._failed.until(fill.key):
            return
        task, _ = self._running.join(fill.key, lambda: self._fills.lead_or_skip(fill), None)
        self._metrics.background_refresh()
        task.add_done_callback(partial(self._after, fill.key))

    def _after(self, key: EntryKey, task: asyncio.Task[Filled]) -> None:
        """Releases a body nobody relays; after a failure, holds the key's next refresh back."""
        close_unread_body(self._tasks, task)
        if task.cancelled():
            return
        failure = task.exception()
        if failure is None:
            if not upstream_failed(task.result()):
                return
        elif not isinstance(failure, UpstreamError | RateLimited):
            return
        now = self._clock()
        self._failed.set(key, now + REFRESH_RETRY_AFTER, now)
