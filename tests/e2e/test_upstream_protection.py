"""Upstream protection: 429 cooldowns shared by replicas, stale-if-error, pool bound, no retries,
and an upstream that is down answered 502, one that is slow 504."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest

from tests.conftest import ProxyFactory
from tests.e2e.test_stampede import burst
from tests.e2e.test_upstream_client import blackhole, closed_port_url
from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, RawServer, ServerThread, replica_settings


async def test_a_429_cools_its_bucket_down_on_every_replica(
    upstream: ServerThread, redis_url: str, fake: FakeLunary
) -> None:
    key, run, other_run = fake.add_key(), fake.add_run(), fake.add_run()
    fake.limited_buckets = {"198.51.100.7"}
    fake.retry_after = "3"
    settings = replica_settings(upstream.url, redis_url)
    limited = {"X-API-Key": key, "X-Forwarded-For": "198.51.100.7"}
    other_bucket = {"X-API-Key": key, "X-Forwarded-For": "203.0.113.9"}
    with ProxyProcess(**settings) as a, ProxyProcess(**settings) as b:
        async with httpx.AsyncClient(timeout=10) as client:
            first = await client.get(f"{a.url}/v1/runs/{run}", headers=limited)
            fake.limited_buckets.clear()  # the upstream would answer now: the proxy must not ask
            on_b = await client.get(f"{b.url}/v1/runs/{other_run}", headers=limited)
            passthrough = await client.get(f"{b.url}/v1/runs/count", headers=limited)
            no_cache = await client.get(
                f"{a.url}/v1/runs/{run}", headers={**limited, "Cache-Control": "no-cache"}
            )
            unaffected = await client.get(f"{b.url}/v1/runs/{other_run}", headers=other_bucket)

    assert first.status_code == 429
    assert first.text == "Sometimes You Just Have to Slow Down."
    for answer in (on_b, passthrough, no_cache):
        assert answer.status_code == 429
        assert answer.json()["error"] == "rate_limited"
        assert 1 <= int(answer.headers["retry-after"]) <= 3
    assert unaffected.status_code == 200
    assert fake.count(run) == 1
    assert fake.count(other_run) == 1  # only the other bucket's request
    assert fake.count("/v1/runs/count") == 0


def test_stale_entry_is_served_during_a_cooldown(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(cache_ttl=60, stale_ttl=60)
    key, run = fake.add_key(), fake.add_run()
    headers = {"X-API-Key": key}
    good = proxy.get(f"/v1/runs/{run}", headers=headers)
    fake.rate_limit = 0  # every further upstream request is a 429

    refreshed = proxy.get(f"/v1/runs/{run}", headers={**headers, "Cache-Control": "no-cache"})
    during = proxy.get(f"/v1/runs/{run}", headers={**headers, "Cache-Control": "no-cache"})

    assert refreshed.headers["x-cache"] == "STALE", refreshed.headers
    assert "fwd-status=429" in refreshed.headers["cache-status"]
    assert during.headers["x-cache"] == "STALE"
    assert "detail=rate-limit-cooldown" in during.headers["cache-status"]
    assert during.content == good.content
    assert fake.count(run) == 2  # the fill and the one 429; the cooldown kept the third away


def test_retry_after_as_an_http_date_is_honoured(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    key, run = fake.add_key(), fake.add_run()
    fake.rate_limit = 0
    fake.retry_after = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))

    proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})
    rejected = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})

    assert rejected.status_code == 429
    assert 3 <= int(rejected.headers["retry-after"]) <= 6
    assert fake.count(run) == 1


async def test_concurrent_upstream_requests_are_bounded(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(fill_max_connections=3)  # passthrough: test_slow_uploads.py
    key = fake.add_key()
    runs = [fake.add_run() for _ in range(12)]
    fake.latency = 0.2

    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(client.get(f"{proxy.url}/v1/runs/{run}", headers={"X-API-Key": key}) for run in runs)
        )

    assert {a.status_code for a in answers} == {200}
    assert fake.max_in_flight == 3


def test_non_idempotent_requests_are_never_retried(make_proxy: ProxyFactory) -> None:
    with RawServer() as dropping:  # reads each request, closes without answering
        proxy = make_proxy(upstream_url=dropping.url)

        answer = proxy.client.post("/v1/runs/ingest", json={"events": []})

    assert answer.status_code == 502
    assert answer.json()["error"] == "upstream_unreachable"
    assert dropping.requests == 1


async def test_in_process_single_flight_holds_while_redis_is_down(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: object
) -> None:
    from tests.servers import RedisServer

    assert isinstance(redis_server, RedisServer)
    proxy = make_proxy(redis_url=redis_url)
    key, run = fake.add_key(), fake.add_run()
    fake.latency = 0.3
    with redis_server.down():
        answers = await burst([proxy.url], f"/v1/runs/{run}", {"X-API-Key": key}, 30)

    assert {a.headers["x-cache"] for a in answers} == {"BYPASS"}
    assert fake.count(run) == 1


async def test_a_joiner_from_another_bucket_is_not_handed_the_leaders_429(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    key, run = fake.add_key(), fake.add_run()
    fake.limited_buckets = {"198.51.100.7"}
    fake.latency = 0.3

    async with httpx.AsyncClient(timeout=10) as client:
        leader = asyncio.create_task(
            client.get(
                f"{proxy.url}/v1/runs/{run}",
                headers={"X-API-Key": key, "X-Forwarded-For": "198.51.100.7"},
            )
        )
        await asyncio.sleep(0.1)  # the limited bucket's request leads the fill
        other = await client.get(
            f"{proxy.url}/v1/runs/{run}",
            headers={"X-API-Key": key, "X-Forwarded-For": "203.0.113.9"},
        )
        limited = await leader

    assert limited.status_code == 429
    assert other.status_code == 200
    assert other.json()["id"] == run


RUN = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


@contextlib.contextmanager
def refusing() -> Iterator[str]:
    """A loopback port nothing listens on."""
    yield closed_port_url()


@pytest.mark.parametrize(
    ("upstream_at", "status", "error"),
    [
        pytest.param(refusing, 502, "upstream_unreachable", id="refused"),
        pytest.param(blackhole, 504, "upstream_timeout", id="never-accepted"),
    ],
)
def test_an_upstream_that_refuses_is_a_502_and_one_that_never_connects_a_504(
    make_proxy: ProxyFactory,
    upstream_at: Callable[[], AbstractContextManager[str]],
    status: int,
    error: str,
) -> None:
    """A cached route and a passthrough path alike, over real sockets (the upstream's transport
    reports both as connect errors of one kind: the adapter must tell them apart)."""
    with upstream_at() as url:
        proxy = make_proxy(upstream_url=url, upstream_timeout=0.3)
        answers = [proxy.get(f"/v1/runs/{RUN}"), proxy.get("/v1/runs/count")]

    assert [answer.status_code for answer in answers] == [status, status]
    assert [answer.json()["error"] for answer in answers] == [error, error]


def test_an_upstream_that_never_answers_is_a_504(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(upstream_timeout=0.3)
    fake.latency = 1.0  # connected, the request read, no answer within the timeout

    answers = [proxy.get(f"/v1/runs/{RUN}"), proxy.get("/v1/runs/count")]

    assert [answer.status_code for answer in answers] == [504, 504]
    assert [answer.json()["error"] for answer in answers] == ["upstream_timeout"] * 2
