"""The fast tier stays server-free: a test that is not marked redis_server cannot start one."""

from __future__ import annotations

import pytest

from tests.servers import RedisClusterServers, RedisSentinelServers, RedisServer


def test_an_unmarked_test_cannot_start_a_redis_server() -> None:
    server = RedisServer()
    try:
        with pytest.raises(RuntimeError, match="is not marked redis_server"):
            server.start()
        assert not server.running
    finally:
        server.close()


@pytest.mark.parametrize("servers", [RedisClusterServers, RedisSentinelServers])
def test_nor_a_cluster_or_a_sentinel(
    servers: type[RedisClusterServers] | type[RedisSentinelServers],
) -> None:
    group = servers()
    try:
        with pytest.raises(RuntimeError, match="is not marked redis_server"):
            group.start()
    finally:
        group.close()


@pytest.mark.redis_server
def test_the_refusal_names_only_unmarked_tests() -> None:
    """Inside a marked test nothing is refused (no server is started here: the fast tier
    deselects this test, the real tier has a server)."""
    assert RedisServer.refusal is None
