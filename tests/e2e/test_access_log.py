"""Access lines: JSON by default, one per request, with a request id returned and forwarded."""

from __future__ import annotations

import httpx
import orjson

from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, ServerThread


def access_lines(log: str) -> list[dict[str, object]]:
    lines = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "proxy.access"]


def test_one_json_access_line_per_request_with_request_ids(
    upstream: ServerThread, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()
    with (
        ProxyProcess(PROXY_UPSTREAM_URL=upstream.url, PROXY_SCOPE_SECRET="s") as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        given = client.get(f"/v1/runs/{run}", headers={"X-API-Key": key, "X-Request-ID": "req-123"})
        made = client.get(f"/v1/runs/{run}", headers={"X-API-Key": key})
        bad_id = client.get("/v1/runs/count", headers={"X-Request-ID": "bad id\twith tab"})
        health = client.get("/healthz")
    log = proxy.final_log  # read after the process stopped: every line is flushed

    ids = {
        given.headers["x-request-id"],
        made.headers["x-request-id"],
        bad_id.headers["x-request-id"],
        health.headers["x-request-id"],
    }
    # start-up probes log lines too: keep this test's own requests, in order
    lines = [line for line in access_lines(log) if line["request_id"] in ids]
    assert [line["path"] for line in lines] == [
        f"/v1/runs/{run}",
        f"/v1/runs/{run}",
        "/v1/runs/count",
        "/healthz",
    ]
    first, second, third, fourth = lines
    assert given.headers["x-request-id"] == "req-123"
    assert first["request_id"] == "req-123"
    assert (first["route"], first["cache"], first["status"], first["upstream_status"]) == (
        "run",
        "miss",
        200,
        200,
    )
    assert first["method"] == "GET"
    assert isinstance(first["duration_ms"], float)
    made_id = made.headers["x-request-id"]
    assert len(made_id) == 32
    assert second["request_id"] == made_id
    assert (second["cache"], second["upstream_status"]) == ("hit", None)
    assert bad_id.headers["x-request-id"] != "bad id\twith tab"
    assert third["route"] == "passthrough"
    assert third["upstream_status"] == 404  # no credential: Lunary says Not Found
    assert fourth["route"] == "own"
    # the upstream sees the same ids, so its logs line up with ours
    assert fake.requests[0].header(b"x-request-id") == b"req-123"
    assert fake.requests[1].header(b"x-request-id") == bad_id.headers["x-request-id"].encode()
    assert key not in log


def test_console_format_for_people(upstream: ServerThread, fake: FakeLunary) -> None:
    with ProxyProcess(PROXY_UPSTREAM_URL=upstream.url, PROXY_LOG_FORMAT="console") as proxy:
        httpx.get(proxy.url + "/healthz")
    log = proxy.final_log

    line = next(line for line in log.splitlines() if "proxy.access" in line)
    assert not line.startswith("{")
    assert "route='own'" in line
    assert "status=200" in line


def test_log_level_warning_turns_access_lines_off(upstream: ServerThread) -> None:
    with ProxyProcess(PROXY_UPSTREAM_URL=upstream.url, PROXY_LOG_LEVEL="warning") as proxy:
        answer = httpx.get(proxy.url + "/healthz")
    log = proxy.final_log

    assert answer.status_code == 200
    assert "proxy.access" not in log


def test_a_redis_password_never_reaches_the_log(upstream: ServerThread) -> None:
    """The start-up line names the store; its password (user part or query) is redacted."""
    url = "redis://default:hunter2@127.0.0.1:1/0?password=hunter3"
    with ProxyProcess(PROXY_UPSTREAM_URL=upstream.url, PROXY_REDIS_URL=url) as proxy:
        httpx.get(proxy.url + "/readyz")  # the store is unreachable: says so, redacted
    log = proxy.final_log

    assert "lunary-cache-proxy ready" in log
    assert "default:***@127.0.0.1:1" in log
    assert "hunter2" not in log
    assert "hunter3" not in log
