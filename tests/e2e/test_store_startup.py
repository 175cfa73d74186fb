"""Start-up opens the store's first connection (and learns a Cluster's slot map) before it
reports ready, so a cold replica's first requests do not pay for it out of their store budget."""

from __future__ import annotations

import pytest
import redis

from tests.conftest import ProxyFactory
from tests.fake_lunary import FakeLunary
from tests.servers import RedisClusterServers, RedisServer


def pings(nodes: list[redis.Redis]) -> int:
    """PING calls the servers have answered, all clients together."""
    return sum(
        int(node.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)) for node in nodes
    )


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_start_up_connects_to_the_store_before_any_request(
    request: pytest.FixtureRequest, make_proxy: ProxyFactory, fake: FakeLunary, kind: str
) -> None:
    if kind == "cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster_servers")
        url, options = request.getfixturevalue("redis_cluster_url"), {"redis_cluster": True}
        nodes = [node.client() for node in cluster.nodes]
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url, options, nodes = request.getfixturevalue("redis_url"), {}, [server.client()]
    before = pings(nodes)

    proxy = make_proxy(redis_url=url, **options)
    after_start = pings(nodes)
    answers = [proxy.get(f"/v1/runs/{fake.add_run()}", headers={"X-API-Key": fake.add_key()})]

    assert after_start == before + 1  # one round trip at start-up, none of them a request's
    assert [a.headers["x-cache"] for a in answers] == ["MISS"]
