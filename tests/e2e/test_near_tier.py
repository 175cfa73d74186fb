"""The in-process tier in front of Redis, across replicas: every way it must stop answering."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ProxyFactory, RunningProxy
from tests.e2e.test_invalidation import metric
from tests.fake_lunary import FakeLunary
from tests.servers import RedisServer

NEAR_HITS = "lunary_proxy_near_lookups_total"


def read(proxy: RunningProxy, run: str, key: str) -> httpx.Response:
    return proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})


def held(proxy: RunningProxy, run: str, key: str) -> None:
    """Read until `proxy` answers `run` from its tier (a fill is read back from Redis once)."""
    for _ in range(3):
        before = metric(proxy, NEAR_HITS, result="hit")
        answer = read(proxy, run, key)
        if metric(proxy, NEAR_HITS, result="hit") > before:
            assert answer.headers["x-cache"] == "HIT"
            return
    raise AssertionError("the tier never answered")


def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.mark.parametrize("store", ["redis", "cluster"])
def test_a_write_through_one_replica_stops_the_others_tier(
    make_proxy: ProxyFactory, fake: FakeLunary, request: pytest.FixtureRequest, store: str
) -> None:
    settings: dict[str, object] = {"redis_url": request.getfixturevalue("redis_url")}
    if store == "cluster":
        settings = {
            "redis_url": request.getfixturevalue("redis_cluster_url"),
            "redis_cluster": True,
        }
    writer, reader = make_proxy(**settings), make_proxy(**settings)
    key, run = fake.add_key(), fake.add_run()
    held(reader, run, key)
    drops = metric(reader, "lunary_proxy_near_invalidations_total", cause="invalidated")

    written = writer.client.patch(
        f"/v1/runs/{run}/tags", json={"tags": ["new"]}, headers={"X-API-Key": key}
    )
    until(
        lambda: metric(reader, "lunary_proxy_near_invalidations_total", cause="invalidated") > drops
    )
    after = read(reader, run, key)

    assert written.status_code == 200
    assert after.json()["tags"] == ["new"]
    assert after.headers["x-cache"] == "MISS"


def test_an_entry_redis_lost_is_noticed_within_the_near_ttl(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    reader = make_proxy(redis_url=redis_url, near_ttl=0.5)
    key, run = fake.add_key(), fake.add_run()
    held(reader, run, key)
    fake.runs[run]["tags"] = ["changed"]  # in Lunary, behind the proxy's back

    redis_server.client().flushall()  # no announcement
    time.sleep(0.6)
    after = read(reader, run, key)

    assert after.headers["x-cache"] == "MISS"
    assert after.json()["tags"] == ["changed"]
    assert metric(reader, NEAR_HITS, result="unconfirmed") >= 1


def test_a_lost_listener_empties_the_tier_and_announcements_missed_meanwhile_do_not_matter(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    reader = make_proxy(redis_url=redis_url, near_ttl=60)
    key, run = fake.add_key(), fake.add_run()
    held(reader, run, key)
    resets = metric(reader, "lunary_proxy_near_invalidations_total", cause="reset")
    client = redis_server.client()

    client.client_kill_filter(_type="pubsub")
    # a write announced while the listener was away: the generation moved, unheard
    client.incr(f"lcp:1:{{{run}}}:gen")
    fake.runs[run]["tags"] = ["changed"]
    until(lambda: metric(reader, "lunary_proxy_near_invalidations_total", cause="reset") > resets)
    after = read(reader, run, key)

    assert after.headers["x-cache"] == "MISS"
    assert after.json()["tags"] == ["changed"]


def test_a_silent_listener_is_noticed_by_heartbeat_and_the_tier_bypassed(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    """A stopped server closes no socket: only the heartbeat can tell."""
    reader = make_proxy(redis_url=redis_url, near_ttl=60, redis_timeout=0.2)
    key, run = fake.add_key(), fake.add_run()
    held(reader, run, key)
    bypassed = metric(reader, NEAR_HITS, result="bypass")

    with redis_server.paused():
        time.sleep(1.2)  # past the heartbeat window
        during = read(reader, run, key)
    until(lambda: read(reader, run, key).headers["x-cache"] == "HIT")

    assert during.headers["x-cache"] == "BYPASS"  # not from the tier: Redis did not answer
    assert metric(reader, NEAR_HITS, result="bypass") > bypassed
    assert metric(reader, "lunary_proxy_near_invalidations_total", cause="reset") >= 1


def test_without_redis_or_when_turned_off_there_is_no_tier(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str
) -> None:
    key, run = fake.add_key(), fake.add_run()
    for proxy in (make_proxy(), make_proxy(redis_url=redis_url, near_cache=False)):
        for _ in range(3):
            read(proxy, run, key)

        assert read(proxy, run, key).headers["x-cache"] == "HIT"
        assert metric(proxy, NEAR_HITS, result="hit") == 0
        assert metric(proxy, NEAR_HITS, result="miss") == 0
