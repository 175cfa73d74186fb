"""The fill step in this process: lead the key's fill, or follow the leader already fetching it.

A herd of misses for one key costs one fill (SingleFlight); a waiter gives up after the coalesce
timeout and fetches alone, and fetches for itself when the leader's answer is not reusable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from proxy.cache.coalesce import SingleFlight
from proxy.cache.cooldowns import RateLimited
from proxy.cache.fill import Fill, Filled, close_unread_body
from proxy.cache.outcome import Plan, failed, for_leader, for_waiter
from proxy.cache.ports import UpstreamError
from proxy.cache.replicas import Coordination, Held, Led, ReplicaFills
from proxy.cache.replies import Reply
from proxy.core.model import EntryKey
from proxy.ops.metrics import Metrics
from proxy.ops.tasks import TaskSet


class Flights:
    """The fills under way in this process, one per key, each with its leader's Plan."""

    def __init__(
        self,
        fills: ReplicaFills,
        metrics: Metrics,
        tasks: TaskSet,
        coordination: Coordination,
    ) -> None:
        self._fills = fills
        self._metrics = metrics
        self._tasks = tasks
        self._coalesce_timeout = coordination.coalesce_timeout
        self._flights: SingleFlight[EntryKey, Filled, Plan] = SingleFlight(tasks)

    def leader_plan(self, key: EntryKey) -> Plan | None:
        """The Plan of the fill of `key` under way here, if any: joining it needs no lookup."""
        flight = self._flights.peek(key)
        return None if flight is None else flight[1]

    def forget(self, matches: Callable[[EntryKey], bool]) -> None:
        """Detach the fills of matching keys: they finish, but nobody new joins them."""
        self._flights.forget(matches)

    async def reply(self, fill: Fill, plan: Plan, looked: Led | Held | None = None) -> Reply:
        """Join the fill in flight for this key, or lead one, starting from what the request's
        lookup did about the fill lock (`looked`)."""
        in_flight = self._flights.peek(fill.key)
        if in_flight is None:
            return await self._lead(fill, plan, looked)
        await self._fills.give_back(fill, looked)  # a rare race: a fill began here meanwhile
        return await self._join(fill, plan, *in_flight)

    async def own_reply(self, fill: Fill, plan: Plan) -> Reply:
        """Fetch for this request alone, still coordinated with the other replicas' fills."""
        return await self._answer_own(self._fills.lead_or_follow(fill), plan)

    async def alone_reply(self, fill: Fill, plan: Plan) -> Reply:
        """Fetch for this request alone and at once, without the cross-replica lock."""
        return await self._answer_own(self._fills.fetch_alone(fill), plan)

    async def _lead(self, fill: Fill, plan: Plan, looked: Led | Held | None) -> Reply:
        def start() -> Coroutine[Any, Any, Filled]:
            return self._fills.lead_or_follow(fill, looked)

        task, _ = self._flights.join(fill.key, start, plan)
        try:
            filled = await self._shielded_for_leader(task)
        except TimeoutError:
            self._metrics.coalesced("timeout")
            return await self.alone_reply(fill, plan)
        except (UpstreamError, RateLimited) as exc:
            return failed(exc, plan)
        return await for_leader(filled, plan)

    async def _join(
        self, fill: Fill, plan: Plan, task: asyncio.Task[Filled], leaders: Plan
    ) -> Reply:
        """Wait, bounded, for the leader's fill; our own `plan` says how to answer from it."""
        # a 429 (or a cooldown) belongs to the leader's rate bucket, not necessarily to ours
        same_bucket = leaders.bucket == fill.bucket
        self._metrics.coalesced("joined")
        try:
            filled = await asyncio.wait_for(asyncio.shield(task), self._coalesce_timeout)
        except TimeoutError:
            self._metrics.coalesced("timeout")
            return await self.alone_reply(fill, plan)
        except (UpstreamError, RateLimited) as exc:
            if isinstance(exc, RateLimited) and not same_bucket:
                return await self.alone_reply(fill, plan)
            return failed(exc, plan)
        reply = for_waiter(filled, plan)
        if reply is None:  # nothing another request can reuse: fetch for ourselves
            self._metrics.coalesced("refetch")
            return await self.own_reply(fill, plan)
        return reply

    async def _answer_own(self, filling: Coroutine[Any, Any, Filled], plan: Plan) -> Reply:
        try:
            filled = await filling
        except (UpstreamError, RateLimited) as exc:
            return failed(exc, plan)
        return await for_leader(filled, plan)

    async def _shielded_for_leader(self, task: asyncio.Task[Filled]) -> Filled:
        """Await our own fill; if our client goes away, the fill still completes and is stored."""
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda done: close_unread_body(self._tasks, done))
            raise
