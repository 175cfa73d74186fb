"""The Redis backends the store tests run on: fakeredis in process, and a real redis-server.

fakeredis (with lupa, so the Lua scripts run) keeps the contract and the fill-lock scripts in
the fast tier, which needs no server; the real server stays the reference they are held to.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fakeredis import FakeAsyncRedis, FakeServer
from redis.asyncio import Redis, RedisCluster

from proxy.store.connection import connect

# a client on one shared Redis; its argument is `connect`'s timeout (None: a pub/sub listener)
ClientFactory = Callable[[float | None], Redis | RedisCluster]

# one id per backend, so each case reads [fakeredis] or [redis] in the report
REDIS_BACKENDS = ["fakeredis", pytest.param("redis", marks=pytest.mark.redis_server)]


def fake_redis() -> ClientFactory:
    """Clients on one fresh in-process fake Redis: they see each other's keys and messages."""
    server = FakeServer()
    return lambda timeout: FakeAsyncRedis(server=server)


def real_redis(url: str) -> ClientFactory:
    """Clients on the redis-server at `url`, built as the app builds them."""
    return lambda timeout: connect(url, cluster=False, timeout=timeout)


def redis_backend(request: pytest.FixtureRequest) -> ClientFactory:
    """An empty Redis for the test, of the kind its REDIS_BACKENDS param names."""
    if request.param == "redis":
        return real_redis(request.getfixturevalue("redis_url"))
    return fake_redis()
