"""The fill step's work: the cooldown check, the upstream fetch, keeping the answer, the release.

Whether a fill may run at all (the cross-replica fill lock) is decided in proxy/cache/replicas.py;
this module does what a fill does once it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.cache.cooldowns import Cooldowns, RateLimited
from proxy.cache.ports import (
    FetchedResponse,
    StoreError,
    StoreRefused,
    Upstream,
    UpstreamError,
    UpstreamRequest,
    WatchedStore,
)
from proxy.core.headers import first_value
from proxy.core.model import DontStore, Entry, EntryKey, Lookup, Reason
from proxy.core.policy import Lifetimes, judge, make_etag, storage_decision
from proxy.ops.metrics import Metrics
from proxy.ops.tasks import TaskSet


@dataclass(frozen=True, slots=True)
class Fill:
    """One upstream fetch for a key: what to send, where to store, which rate bucket it spends."""

    key: EntryKey
    request: UpstreamRequest
    bucket: str
    generation: int
    use_store: bool
    now: float
    # when the entry this request saw was stored (0: none): only a newer one answers it, so a
    # `no-cache` refresh is never handed back the entry it asked to replace
    seen: float = 0.0


@dataclass(slots=True)
class Filled:
    """A fill's outcome. `fetched` is None when another replica fetched and stored `entry`."""

    fetched: FetchedResponse | None
    entry: Entry | None
    stored: bool = False
    not_stored: Reason | None = None


class Filler:
    """Fetches a fill's answer and keeps what may be kept, spending and learning cooldowns."""

    def __init__(
        self,
        store: WatchedStore,
        upstream: Upstream,
        lifetimes: Lifetimes,
        metrics: Metrics,
        cooldowns: Cooldowns,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._lifetimes = lifetimes
        self._metrics = metrics
        self._cooldowns = cooldowns
        self._clock = clock

    async def check_cooldown(self, fill: Fill) -> None:
        """Raises RateLimited while the fill's rate bucket cools down after a 429."""
        try:
            await self._cooldowns.check(fill.bucket, self._clock())
        except RateLimited:
            self._metrics.cooldown_rejection()
            raise

    def answering(self, found: Lookup | None, fill: Fill) -> Entry | None:
        """The entry found, if it is fresh and newer than the one this fill's request saw."""
        entry = None if found is None else found.entry
        if entry is None or entry.stored_at <= fill.seen or judge(entry, self._clock()).ttl <= 0:
            return None
        return entry

    async def fetch_and_keep(self, fill: Fill, token: str | None) -> Filled:
        """Fetch and keep; the fill lock `token` holds (if any) is released whatever happens."""
        try:
            fetched = await self._fetch(fill)
        except BaseException:
            await self.release(fill.key, token)
            raise
        return await self._keep(fill, fetched, token)

    async def check_and_fetch(self, fill: Fill, token: str | None) -> Filled:
        """fetch_and_keep after a cooldown check made holding the fill lock (released if the
        check fails): the lock came with the lookup, or after waiting for another replica's
        fill, whose leader may have met a 429."""
        try:
            await self.check_cooldown(fill)
        except BaseException:
            await self.release(fill.key, token)
            raise
        return await self.fetch_and_keep(fill, token)

    async def release(self, key: EntryKey, token: str | None) -> None:
        """Give the fill lock back without an entry; a store failure only lets its lease run out."""
        if token is None:
            return
        with contextlib.suppress(StoreError):
            await self._store.end_fill(key, token, None)

    async def _fetch(self, fill: Fill) -> FetchedResponse:
        started = time.perf_counter()
        try:
            fetched = await self._upstream.fetch(fill.request, self._lifetimes.max_entry_bytes)
        except UpstreamError as exc:
            self._metrics.upstream("fill", exc.label, time.perf_counter() - started, exc.cause)
            raise
        self._metrics.upstream("fill", fetched.status, fetched.elapsed)
        if await self._cooldowns.learn(fetched.status, fetched.headers, fill.bucket, fill.now):
            self._metrics.cooldown_started()
        return fetched

    async def _keep(self, fill: Fill, fetched: FetchedResponse, token: str | None) -> Filled:
        """Store what may be stored, release the fill lock and wake waiters, in one store call."""
        decision = storage_decision(
            fetched.status, fetched.headers, fetched.body, fetched.complete, self._lifetimes
        )
        entry: Entry | None = None
        not_stored: Reason | None = None
        if isinstance(decision, DontStore):
            not_stored = decision.reason
            self._metrics.not_stored(not_stored)
        else:
            entry = entry_of(
                fetched, fill.now, decision.fresh_for, decision.stale_for, fill.generation
            )
        if not fill.use_store:
            return Filled(fetched, entry, stored=False, not_stored=not_stored)
        try:
            if token is not None:
                await self._store.end_fill(fill.key, token, entry)
            elif entry is not None:
                await self._store.save(fill.key, entry)
        except StoreError as exc:
            if entry is None:  # only the lock's release failed: the policy's reason stands
                return Filled(fetched, entry, stored=False, not_stored=not_stored)
            refused = isinstance(exc, StoreRefused)
            reason = Reason.STORE_REFUSED if refused else Reason.STORE_UNAVAILABLE
            self._metrics.not_stored(reason)
            return Filled(fetched, entry, stored=False, not_stored=reason)
        return Filled(fetched, entry, stored=entry is not None, not_stored=not_stored)


def upstream_failed(filled: Filled) -> bool:
    """A 5xx or 429 answer: stale-if-error applies to it as to a connection failure."""
    return filled.fetched is not None and (
        filled.fetched.status >= 500 or filled.fetched.status == 429
    )


def close_unread_body(tasks: TaskSet, task: asyncio.Task[Filled]) -> None:
    """A fill nobody will relay may hold an open streamed body: release its connection."""
    if task.cancelled() or task.exception() is not None:
        return
    fetched = task.result().fetched
    if fetched is not None and fetched.rest is not None:
        with contextlib.suppress(RuntimeError):  # shutting down: the pool closes it anyway
            tasks.spawn(fetched.rest.aclose(), name="close-unread-body")


def entry_of(
    fetched: FetchedResponse,
    stored_at: float,
    fresh_for: float,
    stale_for: float,
    generation: int = 0,
) -> Entry:
    """The entry form of an upstream answer: what the store keeps, and what waiters share."""
    content_type = first_value(fetched.headers, b"content-type") or b""
    return Entry(
        status=fetched.status,
        content_type=content_type.decode("latin-1"),
        body=fetched.body,
        etag=make_etag(fetched.body),
        stored_at=stored_at,
        fresh_for=fresh_for,
        stale_for=stale_for,
        generation=generation,
    )
