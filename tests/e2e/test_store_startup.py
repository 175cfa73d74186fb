"""Start-up opens the store's first connection (and learns a Cluster's slot map) before it
reports ready, so a cold replica's first requests do not pay for it out of their store budget."""

from __future__ import annotations

import pytest
import redis

from tests.conftest import ProxyFactory
from tests.fake_lunary import FakeLunary
from tests.prometheus import samples, total
from tests.servers import RedisClusterServers, RedisServer

# what a Redis client sends once before its first command on a Cluster: the slot map, the
# command table
DISCOVERY = ("cluster|slots", "command")


def calls(nodes: list[redis.Redis], command: str) -> int:
    """Calls of `command` the servers have answered, all clients together."""
    stats = [node.info("commandstats").get(f"cmdstat_{command}", {}) for node in nodes]
    return sum(int(stat.get("calls", 0)) for stat in stats)


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
    before = calls(nodes, "ping")

    proxy = make_proxy(redis_url=url, redis_timeout=0.25, **options)
    after_start = calls(nodes, "ping")
    discovered = [calls(nodes, command) for command in DISCOVERY]
    answers = [proxy.get(f"/v1/runs/{fake.add_run()}", headers={"X-API-Key": fake.add_key()})]
    metrics = samples(proxy.get("/metrics").text)

    assert after_start == before + 1  # one round trip at start-up, none of them a request's
    assert [a.headers["x-cache"] for a in answers] == ["MISS"]
    # the first request learnt nothing about the cluster: start-up had
    assert [calls(nodes, command) for command in DISCOVERY] == discovered
    assert total(metrics, "lunary_proxy_store_errors_total") == 0
    assert total(metrics, "lunary_proxy_store_breaker_open") == 0
