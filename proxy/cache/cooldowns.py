"""Upstream 429 cooldowns per rate bucket, kept in the process and shared through the store.

Lunary counts requests per first X-Forwarded-For address, so that address is the bucket. Once the
upstream says 429, no replica sends another request in that bucket until Retry-After has passed.
A replica that found a bucket clear in the store trusts that for CLEAR_FOR seconds: a steady
stream of misses then costs the store one cooldown read a second per bucket instead of one per
miss, and another replica's 429 reaches it within that second (its own 429s, at once).
"""

from __future__ import annotations

import contextlib

from proxy.cache.ports import Store, StoreError
from proxy.core.deadlines import Deadlines
from proxy.core.headers import Header, first_value, retry_after_seconds

MAX_LOCAL_BUCKETS = 10_000
CLEAR_FOR = 1.0


class RateLimited(Exception):
    """The rate bucket is cooling down after an upstream 429; `remaining` seconds are left."""

    def __init__(self, remaining: float) -> None:
        super().__init__(f"cooling down for {remaining:.1f} s")
        self.remaining = remaining


class Cooldowns:
    """Until when each bucket must stay away from the upstream (wall-clock seconds)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._local: Deadlines[str] = Deadlines(MAX_LOCAL_BUCKETS)
        # until when the store said "clear"; a flood of buckets is forgotten at half the bound
        self._clear_until: Deadlines[str] = Deadlines(MAX_LOCAL_BUCKETS, MAX_LOCAL_BUCKETS // 2)

    async def remaining(self, bucket: str, now: float) -> float:
        """Seconds left in `bucket`'s cooldown; 0 when it may call the upstream."""
        until = self._local.until(bucket)
        if until <= now and self._clear_until.until(bucket) <= now:
            try:
                until = await self._store.cooldown_until(bucket)
            except StoreError:
                until = 0.0  # the store is down: what this process learned itself still holds
            if until > now:
                self._local.set(bucket, until, now)
            else:
                self._clear_until.set(bucket, now + CLEAR_FOR, now)
        return max(0.0, until - now)

    async def start(self, bucket: str, seconds: float, now: float) -> None:
        until = now + seconds
        if until <= self._local.until(bucket):
            return
        self._local.set(bucket, until, now)
        # if the store is down, the other replicas learn it from their own 429
        with contextlib.suppress(StoreError):
            await self._store.start_cooldown(bucket, until, seconds)

    async def check(self, bucket: str, now: float) -> None:
        """Raise RateLimited while `bucket` cools down."""
        remaining = await self.remaining(bucket, now)
        if remaining > 0:
            raise RateLimited(remaining)

    async def learn(self, status: int, headers: list[Header], bucket: str, now: float) -> bool:
        """Open a cooldown when the upstream answered 429 (for its Retry-After); True if so."""
        if status != 429:
            return False
        retry_after = first_value(headers, b"retry-after")
        await self.start(bucket, retry_after_seconds(retry_after, now), now)
        return True
