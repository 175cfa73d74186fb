"""Redis clients for the store: plain, TLS, unix, Cluster and Sentinel, with bounded calls."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from config.redis_url import SENTINEL_SCHEME, parse_sentinel_url

POOL_SIZE = 64


def connect(
    url: str, *, cluster: bool, timeout: float | None, retries: int = 1
) -> Redis | RedisCluster:
    """A client whose calls the caller bounds with one timeout.

    Reads and the wait for a pooled connection carry no timers of their own: RedisStore bounds
    each call as a whole, once, which on a hit costs one timer instead of three nested ones.
    Connecting is bounded by `timeout` too (5 s for the pub/sub listener, `timeout=None`, which
    waits on its socket for as long as it likes).

    It retries once, at once, and only on a connection error: after Redis restarts, every pooled
    connection is dead and would otherwise fail one request each. A timeout is never retried.
    The pub/sub listener takes `retries=0`: redis-py would reconnect and subscribe again without
    a word, and what was announced meanwhile would be lost unnoticed.
    """
    options: dict[str, Any] = {
        "socket_timeout": None,
        "socket_connect_timeout": timeout or 5.0,
        "retry": Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    if url.startswith(SENTINEL_SCHEME):
        return _sentinel_master(url, options)
    # a burst waits (within the caller's timeout) for one of a bounded set of connections,
    # rather than failing at once past redis-py's default cap or opening hundreds of them
    pool = BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=None, health_check_interval=0, **options
    )
    return Redis.from_pool(pool)


def _sentinel_master(url: str, options: dict[str, Any]) -> Redis:
    """A client that asks the sentinels for the current master (again after a failover)."""
    hosts, service, db, password = parse_sentinel_url(url)
    sentinel_options = {
        "socket_timeout": options["socket_connect_timeout"],  # asking a sentinel is short
        "socket_connect_timeout": options["socket_connect_timeout"],
    }
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_options, **options)  # type: ignore[no-untyped-call]
    master: Redis = sentinel.master_for(service, db=db, password=password)
    master.lcp_sentinels = sentinel.sentinels  # type: ignore[attr-defined]  # see close_client
    return master


async def close_client(client: Redis | RedisCluster) -> None:
    """Close a client from `connect`, and the sentinel clients behind it, if any."""
    await client.aclose()
    for sentinel in getattr(client, "lcp_sentinels", ()):
        await sentinel.aclose()
