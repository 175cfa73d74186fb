"""Redis failing or slow: requests go upstream (BYPASS) without stalling, and caching resumes."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
import redis

from proxy.web import components
from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary
from tests.prometheus import value
from tests.servers import RedisServer

# generous bound on one request while the store fails: far above the 0.25 s store timeout and
# far below what a hung client pool or a retry loop would cost
NO_STALL = 2.0


def read_until_hit(proxy: RunningProxy, path: str, headers: dict[str, str]) -> list[str]:
    """X-Cache of reads every 0.1 s until one is a HIT, for at most 5 s."""
    deadline = time.monotonic() + 5
    results: list[str] = []
    while time.monotonic() < deadline and results[-1:] != ["HIT"]:
        results.append(proxy.get(path, headers=headers).headers["x-cache"])
        time.sleep(0.1)
    return results


def test_redis_down_bypasses_then_caching_resumes(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = make_proxy(redis_url=redis_url, redis_timeout=0.25)
    key, run = fake.add_key(), fake.add_run()
    headers = {"X-API-Key": key}
    assert proxy.get(f"/v1/runs/{run}", headers=headers).headers["x-cache"] == "MISS"

    with redis_server.down():
        during = []
        for _ in range(5):
            started = time.monotonic()
            during.append(proxy.get(f"/v1/runs/{run}", headers=headers))
            assert time.monotonic() - started < NO_STALL
        ready = proxy.get("/readyz")
        health = proxy.get("/healthz")

    assert [r.status_code for r in during] == [200] * 5
    assert [r.headers["x-cache"] for r in during] == ["BYPASS"] * 5
    assert "detail=store-unavailable" in during[0].headers["cache-status"]
    assert ready.status_code == 503
    assert ready.json()["error"] == "not_ready"
    assert health.status_code == 200
    assert fake.count(run) == 6

    # the restarted server is empty: the next read misses and stores, the one after hits
    results = read_until_hit(proxy, f"/v1/runs/{run}", headers)
    assert results[-1] == "HIT", results
    assert proxy.get("/readyz").status_code == 200


def test_slow_redis_costs_at_most_the_store_timeout(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = make_proxy(redis_url=redis_url, redis_timeout=0.25)
    key, run = fake.add_key(), fake.add_run()
    stall = redis.Redis(port=redis_server.port, socket_timeout=10)
    sleeper = threading.Thread(target=stall.execute_command, args=("DEBUG", "SLEEP", "1.5"))
    sleeper.start()
    time.sleep(0.1)

    started = time.monotonic()
    answer = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})
    elapsed = time.monotonic() - started
    sleeper.join()

    assert answer.status_code == 200
    assert answer.headers["x-cache"] == "BYPASS"
    assert elapsed < 1.2  # bounded by PROXY_REDIS_TIMEOUT, not by the 1.5 s stall


def test_proxy_starts_while_redis_is_down(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    redis_url: str,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, run = fake.add_key(), fake.add_run()
    with redis_server.down(), caplog.at_level(logging.WARNING, logger="proxy"):
        started = time.monotonic()
        proxy = make_proxy(redis_url=redis_url)
        start_up = time.monotonic() - started
        answer = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})
        assert proxy.get("/readyz").status_code == 503

    assert answer.status_code == 200
    assert answer.headers["x-cache"] == "BYPASS"
    assert start_up < NO_STALL  # a refused connection is not waited out
    [warning] = [r for r in caplog.records if "at start-up" in r.getMessage()]
    assert warning.getMessage().startswith("the store does not answer at start-up")
    assert warning.__dict__["store"] == (
        f"redis at {redis_url}, in-process tier up to 33554432 bytes, confirmed every 3 s"
    )
    assert warning.__dict__["error"] == "connect failed: ConnectionError"
    assert not [r for r in caplog.records if "bypassing it" in r.getMessage()]  # said once
    # once it answers, caching starts by itself
    results = read_until_hit(proxy, f"/v1/runs/{run}", {"X-API-Key": key})
    assert results[-1] == "HIT", results


def test_a_store_that_never_answers_holds_start_up_for_the_connect_budget_only(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(components, "STORE_CONNECT_BUDGET", 0.5)  # 5 s in production
    key, run = fake.add_key(), fake.add_run()
    with socket.socket() as silent, caplog.at_level(logging.WARNING, logger="proxy"):
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes connections; nothing ever reads or answers
        started = time.monotonic()
        proxy = make_proxy(
            redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0", redis_timeout=0.25
        )
        start_up = time.monotonic() - started
        answer = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})
        metrics = proxy.get("/metrics").text

    assert 0.5 <= start_up < NO_STALL
    [warning] = [r for r in caplog.records if "at start-up" in r.getMessage()]
    assert warning.__dict__["error"] == "connect failed: TimeoutError"
    assert answer.status_code == 200
    assert answer.headers["x-cache"] == "BYPASS"
    assert "detail=store-unavailable" in answer.headers["cache-status"]
    # skipped from the start, as after any failure: no second warning, the breaker shows open
    assert not [r for r in caplog.records if "bypassing it" in r.getMessage()]
    errors = value(metrics, "lunary_proxy_store_errors_total", operation="connect", cause="timeout")
    assert errors == 1
    assert value(metrics, "lunary_proxy_store_breaker_open") == 1
