"""A circuit breaker around a store: after a failure, skip the store for a while, then probe.

While Redis is down every request would otherwise pay a connect error or a full timeout; the
breaker turns that into an immediate StoreUnavailable, and one probe per interval finds the store
again, so caching resumes by itself.

A store that refuses writes (StoreRefused: out of memory under `noeviction`) is up: reads go on,
but for a few seconds writes are not even tried (memory pressure does not pass in a second),
and `writes_refused` tells the reads not to serve stale entries while refreshing them in the
background, since no refresh could be stored.

An invalidation the store missed (it was down, or between masters in a failover) is owed to it:
the store may come back still holding the run's entries (a promoted replica, a healed
partition), so before it is used again the owed invalidations are sent, and until they land the
breaker stays open. Other replicas cannot know of them, so they may serve such an entry until
this one's next probe (the breaker's interval, while it has traffic).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TypeVar

from proxy.cache.ports import (
    Claim,
    FillLock,
    ForeignValue,
    KeptCuts,
    Store,
    StoreError,
    StoreRefused,
    StoreUnavailable,
)
from proxy.core.causes import StoreCause
from proxy.core.model import Entry, EntryKey, Lookup
from proxy.ops.metrics import Metrics

T = TypeVar("T")
log = logging.getLogger("proxy.store")
MAX_OWED = 10_000  # runs whose missed invalidation is kept to send; past it the oldest are lost
SEND_AT_ONCE = 64  # owed invalidations in flight together (the Redis pool's size)


class GuardedStore:
    """A `Store` that counts errors and latency and opens for `open_for` seconds on failure."""

    def __init__(
        self,
        inner: Store,
        metrics: Metrics,
        open_for: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        refuse_writes_for: float = 5.0,
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._open_for = open_for
        self._clock = clock
        self._open_until: float | None = None
        self._probing = False
        self._refuse_writes_for = refuse_writes_for
        self._refusing_until: float | None = None
        # run -> (keep_for, a number no other miss gets), oldest first
        self._owed: dict[str, tuple[float, int]] = {}
        # fail-safe cuts (proxy/core/cuts.py) the store missed: scope -> (at, window, keep_for); the
        # newest of a scope covers its older ones; past MAX_OWED the oldest are lost
        self._owed_cuts: dict[str, tuple[float, float, float]] = {}
        self._misses = itertools.count()
        self._owed_overflowed = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    @property
    def writes_refused(self) -> bool:
        if self._refusing_until is None:
            return False
        if self._clock() < self._refusing_until:
            return True
        self._refusing_until = None
        log.info("store accepts writes again")
        return False

    def peek(self, key: EntryKey) -> Entry | None:
        return self._inner.peek(key)  # no I/O: nothing for the breaker to guard

    async def lookup(self, key: EntryKey) -> Lookup:
        return await self._call("lookup", lambda: self._inner.lookup(key))

    async def lookup_or_lead(self, key: EntryKey, token: str, lease: float) -> Claim:
        """Counted as the "lookup" it is for every cached read. The lock is a write: while writes
        are refused (and when this call is the one refused) it is a plain lookup, so reads go on
        and the fill that follows stores nothing, as it would have with the lock refused."""
        if not self.writes_refused:
            try:
                return await self._call(
                    "lookup", lambda: self._inner.lookup_or_lead(key, token, lease)
                )
            except StoreRefused:
                pass  # counted, and writes are now refused for a while
        return Claim(await self.lookup(key), FillLock.NOT_ASKED)

    async def save(self, key: EntryKey, entry: Entry) -> None:
        self._check_writes()
        await self._call("save", lambda: self._inner.save(key, entry))

    async def invalidate_run(self, run_id: str, keep_for: float) -> int:
        # attempted even with the breaker open: a missed invalidation would serve stale data
        owed = self._owed.get(run_id)
        try:
            dropped = await self._invalidate(run_id, keep_for)
        except StoreError as exc:
            if not isinstance(exc, StoreRefused | ForeignValue):  # a store that is up said no
                self._owe(run_id, keep_for)
            raise
        self._paid(run_id, owed)
        return dropped

    async def declare_cut(self, scope: str, at: float, window: float, keep_for: float) -> None:
        # attempted even with the breaker open, and owed when missed, as an invalidation is
        try:
            await self._measure("cut", self._inner.declare_cut(scope, at, window, keep_for))
        except StoreError as exc:
            if not isinstance(exc, StoreRefused | ForeignValue):
                self._owe_cut(scope, (at, window, keep_for))
            raise

    async def read_cuts(self) -> KeptCuts:
        return await self._call("read_cuts", self._inner.read_cuts)

    async def begin_fill(self, key: EntryKey, token: str, lease: float) -> bool:
        self._check_writes()
        return await self._call("begin_fill", lambda: self._inner.begin_fill(key, token, lease))

    async def lead_fill(self, key: EntryKey, token: str, lease: float) -> Lookup | None:
        self._check_writes()
        return await self._call("begin_fill", lambda: self._inner.lead_fill(key, token, lease))

    async def end_fill(self, key: EntryKey, token: str, entry: Entry | None) -> None:
        # always attempted, even with the breaker open: a lock left behind would make other
        # replicas wait out their coalesce timeout; but a fill that may have read the run from
        # before a write whose invalidation (or cut) the store missed stores nothing
        if self._owed_cuts or key.run_id in self._owed:
            entry = None
        await self._measure("end_fill", self._inner.end_fill(key, token, entry))

    def watch_fill(self, key: EntryKey) -> AbstractContextManager[asyncio.Future[None] | None]:
        return self._inner.watch_fill(key)

    async def cooldown_until(self, bucket: str) -> float:
        return await self._call("cooldown_read", lambda: self._inner.cooldown_until(bucket))

    async def start_cooldown(self, bucket: str, until: float, ttl: float) -> None:
        self._check_writes()
        await self._call("cooldown_write", lambda: self._inner.start_cooldown(bucket, until, ttl))

    async def ping(self) -> None:
        """Always asks the store itself (readiness must tell the truth) and closes on success,
        once the invalidations it missed were sent."""
        await self._send_owed()
        await self._measure("ping", self._inner.ping())
        self._close_breaker()

    async def close(self) -> None:
        await self._inner.close()

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        probe = self._probe()
        try:
            if probe:
                await self._send_owed()
            result = await self._measure(operation, call())
        finally:
            if probe:
                self._probing = False
        self._close_breaker()
        return result

    @property
    def _owes(self) -> bool:
        """Invalidations or cuts the store missed, to send before it is read again."""
        return bool(self._owed or self._owed_cuts)

    def _probe(self) -> bool:
        """Whether this call probes the store (False: it just uses it); StoreUnavailable when it
        must skip it. An open breaker, or invalidations owed, let one call at a time through."""
        if self._open_until is None and not self._owes:
            return False
        if self._probing or (self._open_until is not None and self._clock() < self._open_until):
            raise StoreUnavailable("store breaker is open")
        self._probing = True
        return True

    async def _invalidate(self, run_id: str, keep_for: float) -> int:
        return await self._measure("invalidate", self._inner.invalidate_run(run_id, keep_for))

    def _owe(self, run_id: str, keep_for: float) -> None:
        self._owed.pop(run_id, None)  # to the end: the newest
        self._owed[run_id] = (keep_for, next(self._misses))
        if len(self._owed) > MAX_OWED:
            del self._owed[next(iter(self._owed))]
            if not self._owed_overflowed:
                self._owed_overflowed = True
                log.warning(
                    "too many invalidations missed while the store was away: the oldest "
                    "runs' entries will live until their TTL"
                )

    def _owe_cut(self, scope: str, cut: tuple[float, float, float]) -> None:
        earlier = self._owed_cuts.pop(scope, None)  # to the end: the newest
        self._owed_cuts[scope] = cut if earlier is None or cut[0] > earlier[0] else earlier
        if len(self._owed_cuts) > MAX_OWED:
            del self._owed_cuts[next(iter(self._owed_cuts))]

    def _paid(self, run_id: str, owed: tuple[float, int] | None) -> None:
        """An invalidation of `run_id` landed: it covers the miss `owed` it was sent for, or
        that was noted before it was sent, not one noted since."""
        if self._owed.get(run_id) == owed:
            self._owed.pop(run_id, None)

    async def _send_owed(self) -> None:
        """Send the cuts and invalidations the store missed; a StoreError if one fails (the
        rest stay owed, and the breaker open)."""
        while self._owed_cuts:
            scope, cut = next(iter(self._owed_cuts.items()))
            await self._measure("cut", self._inner.declare_cut(scope, *cut))
            if self._owed_cuts.get(scope) == cut:  # not a newer one noted meanwhile
                del self._owed_cuts[scope]
        if not self._owed:
            return
        count = len(self._owed)
        while self._owed:
            batch = list(itertools.islice(self._owed.items(), SEND_AT_ONCE))
            results = await asyncio.gather(
                *(self._invalidate(run_id, keep_for) for run_id, (keep_for, _) in batch),
                return_exceptions=True,
            )
            for (run_id, owed), result in zip(batch, results, strict=True):
                if not isinstance(result, BaseException):
                    self._paid(run_id, owed)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        self._owed_overflowed = False
        log.info("sent the invalidations the store missed", extra={"runs": count})

    async def _measure(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await call
        except StoreError as exc:
            self._metrics.store_error(operation, exc.cause)
            if isinstance(exc, StoreRefused):  # the store is up: the breaker stays closed
                self._refuse_writes(exc)
            elif not isinstance(exc, ForeignValue):  # (that is one key's trouble)
                self._open_breaker(exc)
            raise
        finally:
            self._metrics.store_latency(operation, time.perf_counter() - started)
        return result

    def _check_writes(self) -> None:
        if self.writes_refused:
            raise StoreRefused("the store refused a write moments ago")

    def _refuse_writes(self, exc: StoreRefused) -> None:
        if self._refusing_until is None:
            log.warning(
                f"store refuses writes: serving what it holds, storing nothing: {exc.cause}",
                extra={"cause": exc.cause.value, "error": exc.detail or str(exc)},
            )
        self._refusing_until = self._clock() + self._refuse_writes_for

    def failed_at_start(self, exc: StoreError | None = None) -> None:
        """The store did not answer at start-up (the caller has said so): skip it from the first
        request on, as after any failure, rather than make that request wait for it again."""
        self._metrics.store_error("connect", exc.cause if exc is not None else StoreCause.OTHER)
        self._open_until = self._clock() + self._open_for
        self._metrics.breaker_open(True)

    def _open_breaker(self, exc: StoreError) -> None:
        if self._open_until is None:
            log.warning(
                f"store failed, bypassing it: {exc.cause}",
                extra={"cause": exc.cause.value, "error": exc.detail or str(exc)},
            )
            self._metrics.breaker_open(True)
        self._open_until = self._clock() + self._open_for

    def _close_breaker(self) -> None:
        if self._open_until is not None and not self._owes:
            self._open_until = None
            log.info("store answers again, caching resumes")
            self._metrics.breaker_open(False)
