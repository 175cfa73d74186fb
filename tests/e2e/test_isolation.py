"""One credential's cached answer never reaches another, and raw credentials are stored nowhere."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary
from tests.servers import RedisServer


def test_answers_are_scoped_by_credential(proxy: RunningProxy, fake: FakeLunary) -> None:
    owner, stranger = fake.add_key("org-a"), fake.add_key("org-b")
    run = fake.add_run("org-a", marker="secret-of-org-a")

    mine = proxy.get(f"/v1/runs/{run}", headers={"Authorization": f"Bearer {owner}"})
    theirs = proxy.get(f"/v1/runs/{run}", headers={"Authorization": f"Bearer {stranger}"})
    again = proxy.get(f"/v1/runs/{run}", headers={"Authorization": f"Bearer {stranger}"})

    assert mine.status_code == 200
    assert b"secret-of-org-a" in mine.content
    assert theirs.status_code == 404
    assert theirs.headers["x-cache"] == "MISS"
    assert again.status_code == 404
    assert again.headers["x-cache"] == "HIT"
    assert b"secret-of-org-a" not in theirs.content + again.content


def test_each_credential_header_is_its_own_scope(proxy: RunningProxy, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()
    variants = [
        {"Authorization": f"Bearer {key}"},
        {"X-API-Key": key},
        {"Authorization": f"Bearer {key}", "X-API-Key": key},
        {"Authorization": f"bearer {key}"},
        {},
    ]

    first = [proxy.get(f"/v1/runs/{run}", headers=h) for h in variants]

    assert [r.headers["x-cache"] for r in first] == ["MISS"] * len(variants)
    assert [r.status_code for r in first] == [200, 200, 200, 200, 404]
    assert first[4].json() == {"message": "Not Found"}
    assert fake.count(run) == len(variants)


def test_anonymous_answers_are_never_served_to_a_key(proxy: RunningProxy, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()

    anonymous = proxy.get(f"/v1/runs/{run}")
    keyed = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})

    assert anonymous.status_code == 404
    assert keyed.status_code == 200
    assert keyed.headers["x-cache"] == "MISS"


def test_no_raw_credential_in_redis_logs_metrics_or_headers(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    redis_url: str,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = make_proxy(redis_url=redis_url)
    key, run = fake.add_key(), fake.add_run()
    unknown = "7d444840-9dc0-11d1-b245-5ffdce74fad2"
    responses = [
        proxy.get(f"/v1/runs/{run}", headers={"Authorization": f"Bearer {key}"}),
        proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key}),
        proxy.get(f"/v1/runs/{unknown}/related", headers={"X-API-Key": key}),
        proxy.get(f"/v1/runs/{run}", headers={"Authorization": "Bearer not-a-uuid-token"}),
    ]
    metrics = proxy.get("/metrics").text

    client = redis_server.client()
    stored = [(k, client.get(k) or b"") for k in client.scan_iter()]
    assert stored, "the run entries should be in Redis"
    for secret in (key.encode(), b"not-a-uuid-token"):
        for redis_key, value in stored:
            assert secret not in redis_key
            assert secret not in value
        assert secret.decode() not in metrics
        assert secret.decode() not in caplog.text
        for response in responses:
            assert secret.decode() not in str(response.headers)
            assert secret not in response.content


def test_redis_keys_keep_a_run_in_one_hash_slot(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = make_proxy(redis_url=redis_url, cache_ttl=60, stale_ttl=600)
    key, run = fake.add_key(), fake.add_run()

    proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})
    proxy.get(f"/v1/runs/{run}/related", headers={"X-API-Key": key})

    client = redis_server.client()
    keys = sorted(k.decode() for k in client.scan_iter())
    assert len(keys) == 2
    assert all(k.startswith(f"lcp:1:{{{run}}}:") for k in keys)
    ttl_ms = client.pttl(keys[0])
    assert 600_000 < ttl_ms <= 660_000  # fresh + stale window
