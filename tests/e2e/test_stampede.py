"""Stampedes across real processes: one upstream request per key and scope, however many ask."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ProxyFactory
from tests.fake_lunary import FakeLunary
from tests.prometheus import value
from tests.servers import ProxyProcess, ServerThread, replica_settings, running_replicas


@pytest.fixture
def replicas(upstream: ServerThread, redis_url: str) -> Iterator[list[ProxyProcess]]:
    """Three proxy processes sharing one redis-server, in front of the fake upstream."""
    settings = replica_settings(upstream.url, redis_url, upstream_timeout="5")
    with running_replicas(3, settings) as procs:
        yield procs


async def burst(
    urls: list[str], path: str, headers: dict[str, str], count: int
) -> list[httpx.Response]:
    """`count` concurrent GETs of `path`, spread round-robin over `urls`."""
    async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=count)) as client:
        return await asyncio.gather(
            *(client.get(urls[i % len(urls)] + path, headers=headers) for i in range(count))
        )


async def test_concurrent_misses_in_one_process_cost_one_upstream_request(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    key, run = fake.add_key(), fake.add_run()
    fake.latency = 0.3

    answers = await burst([proxy.url], f"/v1/runs/{run}", {"X-API-Key": key}, 50)

    assert fake.count(run) == 1
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    statuses = [a.headers["cache-status"] for a in answers]
    assert sum("collapsed" in s for s in statuses) == 49
    assert all(a.headers["x-cache"] == "MISS" for a in answers)
    metrics = proxy.get("/metrics").text
    assert value(metrics, "lunary_proxy_coalesced_waits_total", outcome="joined") == 49


async def test_concurrent_misses_across_replicas_cost_one_upstream_request(
    replicas: list[ProxyProcess], fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()
    fake.latency = 0.3

    answers = await burst([p.url for p in replicas], f"/v1/runs/{run}", {"X-API-Key": key}, 60)

    assert fake.count(run) == 1
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1


async def test_coalescing_is_per_scope(replicas: list[ProxyProcess], fake: FakeLunary) -> None:
    owner, stranger = fake.add_key("org-a"), fake.add_key("org-b")
    run = fake.add_run("org-a", marker="only-for-org-a")
    fake.latency = 0.3
    urls = [p.url for p in replicas]

    mine, theirs = await asyncio.gather(
        burst(urls, f"/v1/runs/{run}", {"X-API-Key": owner}, 30),
        burst(urls, f"/v1/runs/{run}", {"X-API-Key": stranger}, 30),
    )

    assert fake.count(run) == 2
    assert {a.status_code for a in mine} == {200}
    assert {a.status_code for a in theirs} == {404}
    assert all(b"only-for-org-a" not in a.content for a in theirs)


async def test_waiters_fall_back_after_the_coalesce_timeout_and_the_leader_still_stores(
    upstream: ServerThread, redis_url: str, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()
    fake.latency = 1.0
    settings = replica_settings(upstream.url, redis_url, coalesce_timeout="0.2")
    with ProxyProcess(**settings) as first, ProxyProcess(**settings) as second:
        async with httpx.AsyncClient(timeout=10) as client:
            leader = asyncio.create_task(client.get(f"{first.url}/v1/runs/{run}",
                                                    headers={"X-API-Key": key}))  # fmt: skip
            await asyncio.sleep(0.1)
            started = time.monotonic()
            waiter = await client.get(f"{second.url}/v1/runs/{run}", headers={"X-API-Key": key})
            waited = time.monotonic() - started
            await leader
            later = await client.get(f"{second.url}/v1/runs/{run}", headers={"X-API-Key": key})

    assert waiter.status_code == 200
    assert 1.0 < waited < 2.5  # gave up after ~0.2 s, then made its own 1 s request
    assert fake.count(run) == 2
    assert later.headers["x-cache"] == "HIT"


async def test_leader_result_is_stored_when_its_client_gives_up(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    key, run = fake.add_key(), fake.add_run()
    fake.latency = 0.5

    async with httpx.AsyncClient(timeout=0.1) as impatient:
        with pytest.raises(httpx.TimeoutException):
            await impatient.get(f"{proxy.url}/v1/runs/{run}", headers={"X-API-Key": key})
    # until Lunary has answered the abandoned fill, then a moment for the proxy to store it (a
    # fixed 0.6 s from here left a loaded machine 0.2 s for both)
    deadline = time.monotonic() + 10
    while fake.count(run) == 0 or fake.in_flight:
        assert time.monotonic() < deadline, "the abandoned fill never reached Lunary"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    fake.latency = 0
    later = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})

    assert later.headers["x-cache"] == "HIT"
    assert fake.count(run) == 1


async def test_stale_entries_are_served_while_one_refresh_runs_cluster_wide(
    upstream: ServerThread, redis_url: str, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()
    settings = replica_settings(upstream.url, redis_url, cache_ttl="3", stale_ttl="60")
    with (
        ProxyProcess(**settings) as a,
        ProxyProcess(**settings) as b,
        ProxyProcess(**settings) as c,
    ):
        urls = [a.url, b.url, c.url]
        await burst(urls, f"/v1/runs/{run}", {"X-API-Key": key}, 1)
        await asyncio.sleep(3.1)
        fake.latency = 1.5
        fake.runs[run]["name"] = "renamed"

        started = time.monotonic()
        answers = await burst(urls, f"/v1/runs/{run}", {"X-API-Key": key}, 45)
        elapsed = time.monotonic() - started
        # the refresh lands 1.5 s after it was sent, and is fresh for 3 s from then
        deadline = time.monotonic() + 2.5
        after = await burst(urls, f"/v1/runs/{run}", {"X-API-Key": key}, 3)
        while {a.headers["x-cache"] for a in after} != {"HIT"} and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            after = await burst(urls, f"/v1/runs/{run}", {"X-API-Key": key}, 3)

    assert {a.headers["x-cache"] for a in answers} == {"STALE"}
    assert all(a.json()["name"] == "gpt-4o" for a in answers)
    assert elapsed < 1.5  # answered without waiting for the 1.5 s refresh
    assert fake.count(run) == 2  # the first fill and exactly one refresh
    assert {a.headers["x-cache"] for a in after} == {"HIT"}
    assert all(a.json()["name"] == "renamed" for a in after)
