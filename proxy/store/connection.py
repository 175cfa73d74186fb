"""Redis clients for the store: plain, TLS, unix, Cluster and Sentinel, with bounded calls."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

POOL_SIZE = 64


def connect(url: str, *, cluster: bool, timeout: float | None) -> Redis | RedisCluster:
    """A client whose calls the caller bounds with one timeout.

    Reads and the wait for a pooled connection carry no timers of their own: RedisStore bounds
    each call as a whole, once, which on a hit costs one timer instead of three nested ones.
    Connecting is bounded by `timeout` too (5 s for the pub/sub listener, `timeout=None`, which
    waits on its socket for as long as it likes).

    It retries once, at once, and only on a connection error: after Redis restarts, every pooled
    connection is dead and would otherwise fail one request each. A timeout is never retried.
    """
    options: dict[str, Any] = {
        "socket_timeout": None,
        "socket_connect_timeout": timeout or 5.0,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
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


SENTINEL_SCHEME = "redis+sentinel://"


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """`redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`:
    (sentinels, service name, db, password)."""
    rest = url.removeprefix(SENTINEL_SCHEME)
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        user_info, netloc = netloc.rsplit("@", 1)
        password = unquote(user_info.partition(":")[2]) or None
    hosts = []
    for host_port in netloc.split(","):
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {host_port!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("the URL names no sentinel service (…/service_name)")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    return hosts, service, int(db or 0), password


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
