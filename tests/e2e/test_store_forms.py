"""The same cache on `rediss://` (TLS) and on a 3-master Redis Cluster."""

from __future__ import annotations

import asyncio

from tests.conftest import ProxyFactory
from tests.e2e.test_invalidation import cached, warm
from tests.e2e.test_stampede import burst
from tests.fake_lunary import FakeLunary
from tests.servers import (
    ProxyProcess,
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    ServerThread,
    replica_settings,
)


def test_tls_store(make_proxy: ProxyFactory, fake: FakeLunary, tls_redis: RedisServer) -> None:
    tls_redis.client().flushall()
    proxy = make_proxy(redis_url=tls_redis.url)
    key, run = fake.add_key(), fake.add_run()

    answers = [proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key}) for _ in range(2)]

    assert [a.headers["x-cache"] for a in answers] == ["MISS", "HIT"]
    assert proxy.get("/readyz").status_code == 200
    assert any(run.encode() in k for k in tls_redis.client().scan_iter())


def test_cluster_store_caches_and_invalidates_in_one_slot(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    redis_cluster_url: str,
    redis_cluster_servers: RedisClusterServers,
) -> None:
    proxy = make_proxy(
        redis_url=redis_cluster_url, redis_cluster=True, admin_token="test-admin-token-0001"
    )
    keys = [fake.add_key(), fake.add_key()]
    run = fake.add_run()

    warm(proxy, run, keys)
    stored = [
        k for node in redis_cluster_servers.nodes for k in node.client().scan_iter(f"*{run}*")
    ]
    slots = {redis_cluster_servers.nodes[0].client().cluster("keyslot", k) for k in stored}
    purged = proxy.client.delete(
        f"/admin/cache/runs/{run}", headers={"Authorization": "Bearer test-admin-token-0001"}
    )

    assert len(stored) == 4
    assert len(slots) == 1
    assert purged.status_code == 200
    assert cached(proxy, run, keys) == ["MISS"] * 4
    assert proxy.get("/readyz").status_code == 200


async def test_cluster_coalesces_across_replicas(
    upstream: ServerThread, fake: FakeLunary, redis_cluster_url: str
) -> None:
    key, run = fake.add_key(), fake.add_run()
    fake.latency = 0.3
    settings = replica_settings(upstream.url, redis_cluster_url, redis_cluster="true")
    with ProxyProcess(**settings) as a, ProxyProcess(**settings) as b:
        answers = await burst([a.url, b.url], f"/v1/runs/{run}", {"X-API-Key": key}, 40)
        await asyncio.sleep(0)

    assert {x.status_code for x in answers} == {200}
    assert fake.count(run) == 1


def test_sentinel_store_finds_the_master_and_invalidates(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_sentinel: RedisSentinelServers
) -> None:
    redis_sentinel.master.client().flushall()
    proxy = make_proxy(redis_url=redis_sentinel.url, admin_token="test-admin-token-0001")
    keys = [fake.add_key(), fake.add_key()]
    run = fake.add_run()

    warm(proxy, run, keys)
    on_master = list(redis_sentinel.master.client().scan_iter(f"*{run}*"))
    purged = proxy.client.delete(
        f"/admin/cache/runs/{run}", headers={"Authorization": "Bearer test-admin-token-0001"}
    )

    assert len(on_master) == 4
    assert purged.status_code == 200
    assert cached(proxy, run, keys) == ["MISS"] * 4
    assert proxy.get("/readyz").status_code == 200
