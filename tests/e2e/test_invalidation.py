"""Writes, ingests and admin purges drop a run's entries in every scope, for both routes."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.core.runs import ingest_run_uuid
from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary
from tests.servers import RedisServer, ServerThread, replica_settings, running_replicas


def warm(proxy: RunningProxy, run: str, keys: list[str]) -> None:
    """Cache both routes of `run` for every key, and check that they are hits."""
    for key in keys:
        for path in (f"/v1/runs/{run}", f"/v1/runs/{run}/related"):
            proxy.get(path, headers={"X-API-Key": key})
            assert proxy.get(path, headers={"X-API-Key": key}).headers["x-cache"] == "HIT"


def cached(proxy: RunningProxy, run: str, keys: list[str]) -> list[str]:
    return [
        proxy.get(path, headers={"X-API-Key": key}).headers["x-cache"]
        for key in keys
        for path in (f"/v1/runs/{run}", f"/v1/runs/{run}/related")
    ]


def metric(proxy: RunningProxy, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(proxy.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PATCH", "/tags", b'{"tags": ["a"]}'),
        ("PATCH", "/feedback", b'{"thumb": "up"}'),
        ("PATCH", "/score", b'{"label": "x", "value": 1}'),
        ("PATCH", "/visibility", b'{"visibility": true}'),
        ("DELETE", "", b""),
    ],
)
def test_a_successful_write_drops_the_run_in_every_scope(
    proxy: RunningProxy, fake: FakeLunary, method: str, suffix: str, body: bytes
) -> None:
    keys = [fake.add_key(), fake.add_key()]
    run, untouched = fake.add_run(), fake.add_run()
    warm(proxy, run, keys)
    warm(proxy, untouched, keys[:1])

    spelled = {
        "PATCH": f"/V1/Runs/%7B{run.replace('-', '')}%7D",  # Lunary's router ignores case
        "DELETE": f"/v1/runs/{run.upper()}",
    }[method]
    answer = proxy.client.request(
        method,
        spelled + suffix,
        content=body,
        headers={"X-API-Key": keys[0], "Content-Type": "application/json"},
    )
    crashed = fake.crashed
    fake.restart()

    assert answer.status_code == 200
    assert crashed == (method == "DELETE")
    assert cached(proxy, run, keys) == ["MISS"] * 4
    assert cached(proxy, untouched, keys[:1]) == ["HIT", "HIT"]
    assert metric(proxy, "lunary_proxy_invalidations_total", source="write", result="ok") == 1


def test_a_failed_write_drops_nothing(proxy: RunningProxy, fake: FakeLunary) -> None:
    owner, stranger = fake.add_key("org-a"), fake.add_key("org-b")
    run = fake.add_run("org-a")
    warm(proxy, run, [owner])

    refused = proxy.client.delete(f"/v1/runs/{run}", headers={"X-API-Key": stranger})

    assert refused.status_code == 404
    assert cached(proxy, run, [owner]) == ["HIT", "HIT"]


def test_ingest_drops_every_run_and_parent_it_names(proxy: RunningProxy, fake: FakeLunary) -> None:
    key = fake.add_key()
    parent = fake.add_run()
    child = fake.add_run(parent=parent)
    legacy = fake.add_run(run_id=ingest_run_uuid("legacy-id-42"))
    bystander = fake.add_run()
    for run in (parent, child, legacy, bystander):
        warm(proxy, run, [key])
    events = {
        "events": [
            {"type": "llm", "event": "end", "runId": child, "parentRunId": parent},
            {"type": "llm", "event": "start", "runId": "legacy-id-42"},
        ]
    }
    raw = orjson.dumps(events)

    answer = proxy.client.post(
        "/v1/runs/ingest",
        content=raw,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )

    assert answer.status_code == 200
    assert fake.requests[-1].body == raw  # forwarded unchanged
    for run in (parent, child, legacy):
        assert cached(proxy, run, [key]) == ["MISS", "MISS"]
    assert cached(proxy, bystander, [key]) == ["HIT", "HIT"]


def test_keys_in_any_case_style_are_read_as_lunary_reads_them(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    """Lunary camelCases every key (UPSTREAM.md): run_id is runId."""
    key, run, bystander = fake.add_key(), fake.add_run(), fake.add_run()
    warm(proxy, run, [key])
    warm(proxy, bystander, [key])
    body = b'{"events": [{"type": "llm", "event": "feedback", "run_id": "%s"}]}' % run.encode()

    answer = proxy.client.post(
        "/v1/runs/ingest",
        content=body,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )

    assert answer.status_code == 200
    assert cached(proxy, run, [key]) == ["MISS", "MISS"]
    assert cached(proxy, bystander, [key]) == ["HIT", "HIT"]  # read exactly: no cut


def test_a_single_event_object_is_understood_too(proxy: RunningProxy, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()
    warm(proxy, run, [key])

    proxy.client.post(
        "/v1/runs/ingest",
        json={"events": {"runId": run, "event": "feedback"}},
        headers={"X-API-Key": key},
    )

    assert cached(proxy, run, [key]) == ["MISS", "MISS"]


def test_an_unreadable_ingest_is_forwarded_unchanged_counted_and_cuts_older_entries(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    """The fail-safe (proxy/core/cuts.py): the writer's entries are misses at once; another
    credential's stay fresh for at most PROXY_ACTIVE_RUN_TTL (2 s here) and are never stale."""
    writer, other, run = fake.add_key(), fake.add_key(), fake.add_run()
    warm(proxy, run, [writer, other])
    before = metric(proxy, "lunary_proxy_ingest_unparsed_total")
    unreadable = b'{"events": [{"runId": 1.5, "event": "feedback"}]}'  # no id the proxy can map

    answer = proxy.client.post(
        "/v1/runs/ingest",
        content=unreadable,
        headers={"X-API-Key": writer, "Content-Type": "application/json"},
    )
    forwarded = fake.requests[-1].body
    writers_reads = cached(proxy, run, [writer])
    others_reads = cached(proxy, run, [other])
    fake.runs[run]["tags"] = ["changed"]
    time.sleep(2.2)
    others_later = [
        proxy.get(path, headers={"X-API-Key": other})
        for path in (f"/v1/runs/{run}", f"/v1/runs/{run}/related")
    ]

    assert answer.status_code == 200
    assert forwarded == unreadable
    assert metric(proxy, "lunary_proxy_ingest_unparsed_total") == before + 1
    assert metric(proxy, "lunary_proxy_cuts_total", reason="id_value") == 1
    assert writers_reads == ["MISS", "MISS"]
    assert others_reads == ["HIT", "HIT"]
    assert [r.headers["x-cache"] for r in others_later] == ["MISS", "MISS"]  # never STALE
    assert others_later[0].json()["tags"] == ["changed"]


@pytest.mark.parametrize("listener", ["connected", "cut off"])
def test_a_cut_reaches_every_replica_through_the_store(
    fake: FakeLunary,
    upstream: ServerThread,
    redis_url: str,
    redis_server: RedisServer,
    listener: str,
) -> None:
    """Cut off: the second replica's pub/sub connection is killed just before the write, so
    it may miss the announcement; it must then read the kept cuts back before it answers
    from the store again."""
    writer, run = fake.add_key(), fake.add_run()
    settings = replica_settings(upstream.url, redis_url)
    with running_replicas(2, settings) as (first, second):
        for replica in (first, second):  # each has read it: the entry is in Redis
            httpx.get(f"{replica.url}/v1/runs/{run}", headers={"X-API-Key": writer})
        hit = httpx.get(f"{second.url}/v1/runs/{run}", headers={"X-API-Key": writer})
        fake.runs[run]["tags"] = ["changed"]
        if listener == "cut off":
            redis_server.client().client_kill_filter(_type="pubsub")
        written = httpx.post(
            f"{first.url}/v1/runs/ingest",
            content=b'{"events": [{"runId": 1.5}]}',  # Lunary reads ids this proxy cannot
            headers={"X-API-Key": writer, "Content-Type": "application/json"},
        )
        after = [
            httpx.get(f"{second.url}/v1/runs/{run}", headers={"X-API-Key": writer})
            for _ in range(20)
        ]
        kept = redis_server.client().zrange("lcp:1:{cuts}", 0, -1, withscores=True)

    assert hit.headers["x-cache"] == "HIT"
    assert written.status_code == 200
    assert after[0].headers["x-cache"] == "MISS"
    assert all(read.json()["tags"] == ["changed"] for read in after)
    assert len(kept) == 1  # one member: the writer's scope digest, never its key
    assert writer not in str(kept)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_admin_purge(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    store: str,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    extra = {"redis_url": request.getfixturevalue("redis_url")} if store == "redis" else {}
    proxy = make_proxy(admin_token="s3cret-admin-token-0002", **extra)
    keys = [fake.add_key(), fake.add_key()]
    run = fake.add_run()
    warm(proxy, run, keys)
    path = f"/admin/cache/runs/{{{run.upper()}}}"

    missing = proxy.client.delete(path)
    wrong = proxy.client.delete(path, headers={"Authorization": "Bearer nope"})
    basic = proxy.client.delete(path, headers={"Authorization": "Basic s3cret-admin-token-0002"})
    get = proxy.get(path, headers={"Authorization": "Bearer s3cret-admin-token-0002"})
    not_uuid = proxy.client.delete(
        "/admin/cache/runs/abc", headers={"Authorization": "Bearer s3cret-admin-token-0002"}
    )
    still = cached(proxy, run, keys)
    purged = proxy.client.delete(path, headers={"Authorization": "Bearer s3cret-admin-token-0002"})

    assert missing.status_code == 401
    assert missing.json()["error"] == "unauthorized"
    assert wrong.status_code == 403
    assert basic.status_code == 401
    assert get.status_code == 405
    assert not_uuid.status_code == 400
    assert still == ["HIT"] * 4
    assert purged.status_code == 200
    assert purged.json() == {"run_id": run, "invalidated": True}
    assert cached(proxy, run, keys) == ["MISS"] * 4
    assert all(b"/admin" not in seen.raw_path for seen in fake.requests)
    assert "s3cret-admin" not in proxy.get("/metrics").text
    assert "s3cret-admin" not in caplog.text


def test_admin_is_off_without_a_token(proxy: RunningProxy, fake: FakeLunary) -> None:
    run = fake.add_run()

    answer = proxy.client.delete(
        f"/admin/cache/runs/{run}", headers={"Authorization": "Bearer anything"}
    )

    assert answer.status_code == 404
    assert fake.requests == []


def test_invalidation_is_one_generation_bump_however_many_scopes(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = make_proxy(redis_url=redis_url, admin_token="test-admin-token-0001")
    keys = [fake.add_key() for _ in range(12)]
    run = fake.add_run()
    warm(proxy, run, keys)
    client = redis_server.client()
    client.config_resetstat()

    proxy.client.delete(
        f"/admin/cache/runs/{run}", headers={"Authorization": "Bearer test-admin-token-0001"}
    )

    stats = client.info("commandstats")
    assert "cmdstat_scan" not in stats
    assert "cmdstat_keys" not in stats
    # one script call touching one key, however many scopes hold the run
    evals = [stats[name] for name in stats if name.startswith("cmdstat_eval")]
    assert sum(s["calls"] - s.get("failed_calls", 0) for s in evals) == 1  # NOSCRIPT retries aside
    assert stats["cmdstat_set"]["calls"] == 1
    generation_key = f"lcp:1:{{{run}}}:gen"
    assert int(client.get(generation_key) or 0) > 0
    assert client.pttl(generation_key) > 600_000  # outlives every entry written before it
    assert cached(proxy, run, keys[:2]) == ["MISS"] * 4


async def test_a_read_after_a_write_never_joins_a_fill_from_before_it(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    key, run = fake.add_key(), fake.add_run()
    fake.read_latency = 0.6
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
        before = asyncio.create_task(client.get(f"/v1/runs/{run}", headers=headers))
        await asyncio.sleep(0.2)  # its fill is under way, reading the old tags
        written = await client.patch(
            f"/v1/runs/{run}/tags", json={"tags": ["new"]}, headers=headers
        )
        after = await client.get(f"/v1/runs/{run}", headers=headers)
        await before

    assert written.status_code == 200
    assert after.json()["tags"] == ["new"]


async def test_a_read_after_a_write_through_another_replica_never_joins_an_older_fill(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str
) -> None:
    writer, reader = make_proxy(redis_url=redis_url), make_proxy(redis_url=redis_url)
    key, run = fake.add_key(), fake.add_run()
    fake.read_latency = 0.6  # the run is read when the request arrives, answered 0.6 s later
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(timeout=10) as client:
        before = asyncio.create_task(client.get(f"{reader.url}/v1/runs/{run}", headers=headers))
        await asyncio.sleep(0.2)  # the reader's fill is under way, with the old tags
        written = await client.patch(
            f"{writer.url}/v1/runs/{run}/tags", json={"tags": ["new"]}, headers=headers
        )
        after = await client.get(f"{reader.url}/v1/runs/{run}", headers=headers)
        first = await before

    assert written.status_code == 200
    assert first.json()["tags"] is None  # began before the write: may answer the old run
    assert after.json()["tags"] == ["new"]
    assert fake.count(run, "GET") == 2
