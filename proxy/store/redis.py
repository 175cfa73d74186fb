"""The shared store on Redis (redis-py asyncio, hiredis parser), one round trip per lookup.

Layout, all keys of a run in one Cluster hash slot:
  lcp:1:{<run-id>}:gen                      the run's generation (absent = 0)
  lcp:1:{<run-id>}:<route>:<scope>[:q...]   an entry, carrying the generation it was read under
An entry whose generation is behind the run's counter is ignored, so dropping every entry of a run
is one INCR however many scopes hold it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.model import Entry, EntryKey, Lookup
from proxy.ports import StoreError
from proxy.store import codec

KEY_PREFIX = "lcp:1:"


def run_prefix(run_id: str) -> str:
    return f"{KEY_PREFIX}{{{run_id}}}:"


def entry_redis_key(key: EntryKey) -> str:
    return run_prefix(key.run_id) + key.name


def generation_redis_key(run_id: str) -> str:
    return run_prefix(run_id) + "gen"


def connect(url: str, *, cluster: bool, timeout: float) -> Redis | RedisCluster:
    """A client that never retries by itself: a failing store must cost one timeout, not several."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, health_check_interval=0, **options)


class RedisStore:
    """Entries in Redis; every call bounded by `timeout` and mapped to StoreError on failure."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        timeout: float,
        on_corrupt: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._on_corrupt = on_corrupt

    async def lookup(self, key: EntryKey) -> Lookup:
        redis_key = entry_redis_key(key)
        try:
            async with asyncio.timeout(self._timeout):
                generation_raw, data = await self._client.mget(
                    generation_redis_key(key.run_id), redis_key
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"lookup failed: {type(exc).__name__}") from exc
        generation = _as_generation(generation_raw)
        if not isinstance(data, bytes):
            return Lookup(None, generation)
        try:
            entry = codec.decode(data)
        except codec.CorruptEntry:
            self._on_corrupt()
            return Lookup(None, generation)
        if entry.generation != generation:
            return Lookup(None, generation)
        return Lookup(entry, generation)

    async def save(self, key: EntryKey, entry: Entry) -> None:
        ttl_ms = int(entry.kept_for * 1000)
        if ttl_ms <= 0:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(entry_redis_key(key), codec.encode(entry), px=ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"save failed: {type(exc).__name__}") from exc

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"ping failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._client.aclose()


def _as_generation(raw: object) -> int:
    if not isinstance(raw, bytes):
        return 0
    try:
        return max(0, int(raw))
    except ValueError:
        return 0  # a foreign value: entries written under it still match only each other
