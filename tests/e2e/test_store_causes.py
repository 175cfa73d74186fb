"""A store failure says why, in the same words as an upstream one: the store errors metric's
`cause` label, the warning, and /readyz's reason; over real redis-server processes."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary
from tests.prometheus import value
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.redis_server
ERRORS = "lunary_proxy_store_errors_total"


def not_ready(proxy: RunningProxy, cause: str) -> str:
    """/readyz's reason, once it names `cause`."""
    answer = proxy.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert (body["error"], body["cause"]) == ("not_ready", cause)
    message: str = body["message"]
    assert message.startswith(f"the store does not answer: {cause} (")
    return message


def store_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "proxy.store" and "cause" in r.__dict__]


def test_a_wrong_password_is_auth(
    make_proxy: ProxyFactory, fake: FakeLunary, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer() as server:
        server.client().config_set("requirepass", "the-right-one")  # (after its start-up ping)
        proxy = make_proxy(redis_url=f"redis://:not-the-password@127.0.0.1:{server.port}/0")
        reason = not_ready(proxy, "auth")
        answer = proxy.get(f"/v1/runs/{fake.add_run()}", headers={"X-API-Key": fake.add_key()})
        metrics = proxy.get("/metrics").text

    assert "invalid username-password pair" in reason
    assert "not-the-password" not in reason
    assert answer.status_code == 200  # served from Lunary, the store bypassed
    assert value(metrics, ERRORS, operation="connect", cause="auth") == 1
    assert value(metrics, ERRORS, operation="ping", cause="auth") == 1
    assert "not-the-password" not in caplog.text + repr([r.__dict__ for r in caplog.records])


def test_nothing_listening_is_refused(
    make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    proxy = make_proxy(redis_url=f"redis://127.0.0.1:{port}/0")
    reason = not_ready(proxy, "refused")
    metrics = proxy.get("/metrics").text

    assert f"127.0.0.1:{port}" in reason
    assert value(metrics, ERRORS, operation="ping", cause="refused") == 1


def test_a_paused_server_is_a_timeout(
    make_proxy: ProxyFactory,
    redis_server: RedisServer,
    redis_url: str,
    fake: FakeLunary,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = make_proxy(redis_url=redis_url, redis_timeout=0.3)
    assert proxy.get("/readyz").status_code == 200
    with redis_server.paused():
        reason = not_ready(proxy, "timeout")
        answer = proxy.get(f"/v1/runs/{fake.add_run()}", headers={"X-API-Key": fake.add_key()})
        metrics = proxy.get("/metrics").text

    assert reason == "the store does not answer: timeout (no answer within the store timeout)"
    assert answer.status_code == 200
    assert value(metrics, ERRORS, operation="ping", cause="timeout") == 1
    [warning] = store_warnings(caplog)  # the breaker opened once
    assert warning.__dict__["cause"] == "timeout"
    assert "timeout" in warning.getMessage()


def test_a_read_only_replica_is_readonly(
    make_proxy: ProxyFactory, fake: FakeLunary, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica of a master that is not there: it answers reads and pings, refuses writes."""
    master_port = str(free_port())
    with RedisServer("--replicaof", "127.0.0.1", master_port) as replica:
        proxy = make_proxy(redis_url=replica.url, near_cache=False)
        ready = proxy.get("/readyz")
        answer = proxy.get(f"/v1/runs/{fake.add_run()}", headers={"X-API-Key": fake.add_key()})
        metrics = proxy.get("/metrics").text

    assert ready.status_code == 200  # it answers: readiness is about answering
    assert answer.status_code == 200
    assert value(metrics, ERRORS, operation="lookup", cause="readonly") == 1
    [warning] = store_warnings(caplog)
    assert warning.__dict__["cause"] == "readonly"
    assert "READONLY" in warning.__dict__["error"] or "read only" in warning.__dict__["error"]


def test_out_of_memory_is_oom(make_proxy: ProxyFactory, fake: FakeLunary) -> None:
    with RedisServer("--maxmemory", "1", "--maxmemory-policy", "noeviction") as server:
        proxy = make_proxy(redis_url=server.url, near_cache=False)
        answer = proxy.get(f"/v1/runs/{fake.add_run()}", headers={"X-API-Key": fake.add_key()})
        ready = proxy.get("/readyz")
        metrics = proxy.get("/metrics").text

    assert answer.status_code == 200
    assert "detail=store-refused" in answer.headers["cache-status"]
    assert ready.status_code == 200  # up, refusing writes: still serving what it holds
    assert value(metrics, ERRORS, operation="lookup", cause="oom") == 1
