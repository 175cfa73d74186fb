"""/metrics counts hits, misses, bypasses and upstream answers in Prometheus text format."""

from __future__ import annotations

from tests.conftest import ProxyFactory
from tests.fake_lunary import FakeLunary
from tests.prometheus import value
from tests.servers import RedisServer


def test_cache_results_and_upstream_statuses_are_counted(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    # every hit from Redis, so the read with Redis down is a bypass from its first moment (the
    # in-process tier answers until its listener notices: tests/e2e/test_near_tier.py)
    proxy = make_proxy(redis_url=redis_url, near_cache=False)
    key, run = fake.add_key(), fake.add_run()
    missing = "9a2b3c4d-0000-4000-8000-000000000001"
    headers = {"X-API-Key": key}

    proxy.get(f"/v1/runs/{run}", headers=headers)
    proxy.get(f"/v1/runs/{run}", headers=headers)
    proxy.get(f"/v1/runs/{run}", headers=headers)
    proxy.get(f"/v1/runs/{missing}", headers=headers)
    proxy.get(f"/v1/runs/{missing}", headers=headers)
    proxy.get(f"/v1/runs/{run}/related", headers={**headers, "Cache-Control": "no-store"})
    proxy.get("/v1/runs/count", headers=headers)
    with redis_server.down():
        proxy.get(f"/v1/runs/{run}", headers=headers)
        down = proxy.get("/metrics").text
    text = proxy.get("/metrics").text

    assert value(text, "lunary_proxy_requests_total", route="run", cache="miss") == 2
    assert value(text, "lunary_proxy_requests_total", route="run", cache="hit") == 2
    assert value(text, "lunary_proxy_requests_total", route="run", cache="negative_hit") == 1
    assert value(text, "lunary_proxy_requests_total", route="run", cache="bypass") == 1
    assert value(text, "lunary_proxy_requests_total", route="related", cache="bypass") == 1
    fills_2xx = value(text, "lunary_proxy_upstream_requests_total", purpose="fill", status="2xx")
    assert fills_2xx == 3
    assert value(text, "lunary_proxy_upstream_requests_total", purpose="fill", status="4xx") == 1
    assert (
        value(text, "lunary_proxy_upstream_requests_total", purpose="passthrough", status="2xx")
        == 1
    )
    assert value(text, "lunary_proxy_upstream_request_duration_seconds_count", purpose="fill") == 4
    lookup_errors = value(
        text, "lunary_proxy_store_errors_total", operation="lookup", cause="refused"
    )
    assert lookup_errors >= 1
    assert value(down, "lunary_proxy_store_breaker_open") == 1
    assert value(text, "lunary_proxy_build_info", version="0.1.0") == 1
    assert key not in text
    assert run not in text
