"""Everything else is forwarded unchanged; bad paths are refused before they reach the upstream."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import orjson
import pytest

from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary
from tests.servers import raw_answer


def raw_request(proxy: RunningProxy, request_line: bytes, extra: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as the client wrote them (httpx would normalise the path)."""
    status, _, body = raw_answer(
        proxy.port, request_line + b"\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n"
    )
    return status, body


def test_writes_and_other_paths_are_forwarded_with_body_and_query(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    key = fake.add_key()
    events = orjson.dumps({"events": [{"runId": "r1", "event": "start", "type": "llm"}]})

    ingest = proxy.client.post(
        "/v1/runs/ingest",
        content=events,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    template = proxy.get("/v1/template_versions/latest?slug=my%20prompt&x=1")

    assert ingest.status_code == 200
    assert ingest.json() == {"results": [{"id": "r1", "success": True}]}
    assert fake.requests[0].body == events
    assert fake.requests[0].method == "POST"
    assert template.json()["slug"] == "my prompt"
    assert fake.requests[1].query_string == b"slug=my%20prompt&x=1"
    assert "x-cache" not in ingest.headers


def test_large_bodies_stream_both_ways(proxy: RunningProxy, fake: FakeLunary) -> None:
    payload = bytes(range(256)) * 40_000  # ~10 MB

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536]

    echoed = proxy.client.post("/echo", content=chunks())

    assert echoed.status_code == 201
    assert echoed.content == payload
    assert fake.requests[0].body == payload


def test_x_forwarded_for_is_appended_and_hop_by_hop_headers_dropped(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    proxy.get(
        "/v1/template_versions/latest",
        headers={
            "X-Forwarded-For": "203.0.113.7",
            "Connection": "X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Proxy-Authorization": "Basic abc",
            "X-Custom": "kept",
        },
    )
    run = fake.add_run()
    proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": fake.add_key()})

    passthrough, fill = fake.requests
    assert passthrough.header(b"x-forwarded-for") == b"203.0.113.7, 127.0.0.1"
    assert passthrough.header(b"x-secret-hop") is None
    assert passthrough.header(b"proxy-authorization") is None
    assert passthrough.header(b"x-custom") == b"kept"
    assert passthrough.header(b"host") == f"127.0.0.1:{fake_port(fake)}".encode()
    assert fill.header(b"x-forwarded-for") == b"127.0.0.1"
    assert fill.header(b"accept-encoding") == b"identity"


def fake_port(fake: FakeLunary) -> str:
    host = fake.requests[0].header(b"host") or b""
    return host.decode().rsplit(":", 1)[1]


def test_path_is_forwarded_exactly_as_sent(proxy: RunningProxy, fake: FakeLunary) -> None:
    status, _ = raw_request(proxy, b"GET /v1/files/a%252e%252e/b%20c?q=%2F HTTP/1.1")

    assert status == 404
    assert fake.requests[0].raw_path == b"/v1/files/a%252e%252e/b%20c"
    assert fake.requests[0].query_string == b"q=%2F"


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/runs/../admin",
        b"/v1/runs/./x",
        b"/v1/runs/%2e%2e/admin",
        b"/v1/runs/.%2E/admin",
        b"/v1/runs/%2E/x",
        b"/v1/runs/a%2Fb",
        b"/v1/runs/a%2fb/related",
        b"/v1/runs/a%00b",
        b"/v1/runs/a%0ab",
        b"/v1/runs/a%7Fb",
        b"/..",
        b"/v1/runs/a\\b",
        b"/v1/runs/a%5Cb",
        b"/v1/runs/a%5cb/related",
    ],
)
def test_bad_paths_get_400_json_and_are_never_forwarded(
    proxy: RunningProxy, fake: FakeLunary, target: bytes
) -> None:
    status, body = raw_request(proxy, b"GET " + target + b" HTTP/1.1")

    assert status == 400
    assert orjson.loads(body)["error"] == "bad_request"
    assert "message" in orjson.loads(body)
    assert fake.requests == []


@pytest.mark.parametrize("target", [b"/v1/runs/a/..\\b", b"/v1/template_versions%5Clatest"])
def test_a_backslash_raw_or_encoded_is_refused_by_the_path_check(
    proxy: RunningProxy, fake: FakeLunary, target: bytes
) -> None:
    status, body = raw_request(proxy, b"GET " + target + b" HTTP/1.1")

    assert status == 400
    assert "backslash" in orjson.loads(body)["message"]  # the path check's, not the parser's
    assert fake.requests == []


def test_raw_control_character_in_path_is_refused(proxy: RunningProxy, fake: FakeLunary) -> None:
    status, _ = raw_request(proxy, b"GET /v1/runs/a\x01b HTTP/1.1")

    assert 400 <= status < 500
    assert fake.requests == []


def test_request_body_over_the_limit_gets_413(make_proxy: ProxyFactory, fake: FakeLunary) -> None:
    proxy = make_proxy(max_request_bytes=1000)

    declared = proxy.client.post("/v1/runs/ingest", content=b"x" * 1001)

    def chunked() -> Iterator[bytes]:
        for _ in range(20):
            yield b"y" * 100

    streamed = proxy.client.post("/v1/runs/ingest", content=chunked())
    fits = proxy.client.post("/echo", content=b"z" * 1000)

    assert declared.status_code == 413
    assert declared.json()["error"] == "payload_too_large"
    assert streamed.status_code == 413
    assert fits.status_code == 201
    assert [seen.raw_path for seen in fake.requests if seen.body] == [b"/echo"]


def test_passthrough_off_answers_404_and_405(make_proxy: ProxyFactory, fake: FakeLunary) -> None:
    proxy = make_proxy(passthrough=False)
    run = fake.add_run()

    other = proxy.get("/v1/template_versions/latest")
    write = proxy.client.delete(f"/v1/runs/{run}")
    tags = proxy.client.patch(f"/v1/runs/{run}/tags", json=["a"])
    read = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": fake.add_key()})

    assert other.status_code == 404
    assert other.json()["error"] == "not_found"
    assert write.status_code == 405
    assert write.headers["allow"] == "GET, HEAD"
    assert tags.status_code == 404
    assert read.status_code == 200
    assert [seen.method for seen in fake.requests] == ["GET"]


def test_unreachable_upstream_gives_502_and_slow_upstream_504(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    down = make_proxy(upstream_url=f"http://127.0.0.1:{closed_port}")
    slow = make_proxy(upstream_timeout=0.3)
    fake.latency = 1.0
    run = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

    unreachable = [down.get(f"/v1/runs/{run}"), down.get("/v1/runs/count")]
    timed_out = [slow.get(f"/v1/runs/{run}"), slow.get("/v1/runs/count")]

    assert [r.status_code for r in unreachable] == [502, 502]
    assert [r.json()["error"] for r in unreachable] == ["upstream_unreachable"] * 2
    assert [r.status_code for r in timed_out] == [504, 504]
    assert [r.json()["error"] for r in timed_out] == ["upstream_timeout"] * 2


def test_own_endpoints_are_never_forwarded(proxy: RunningProxy, fake: FakeLunary) -> None:
    health = proxy.get("/healthz")
    ready = proxy.get("/readyz")
    metrics = proxy.get("/metrics")
    post = proxy.client.post("/healthz")

    assert health.status_code == 200
    assert ready.status_code == 200
    assert metrics.status_code == 200
    assert "lunary_proxy_requests_total" in metrics.text
    assert post.status_code == 405
    assert fake.requests == []


def test_admin_and_openapi_paths_are_never_forwarded(proxy: RunningProxy, fake: FakeLunary) -> None:
    run = fake.add_run()

    admin = proxy.client.delete(
        f"/admin/cache/runs/{run}", headers={"Authorization": "Bearer admin-token"}
    )
    spec = proxy.get("/openapi.json")

    assert admin.status_code == 404
    assert spec.status_code == 200
    assert spec.json()["info"]["title"] == "lunary-cache-proxy"
    assert fake.requests == []


def test_brace_spelled_run_path_reaches_the_upstream_verbatim(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()
    target = b"/v1/runs/{" + run.encode() + b"}"

    status, _ = raw_request(
        proxy, b"GET " + target + b" HTTP/1.1", b"X-API-Key: %s\r\n" % key.encode()
    )

    assert status == 200
    assert fake.requests[0].raw_path == target


@pytest.mark.parametrize(
    "path", ["/Admin/cache/runs/x", "/admin", "/%61dmin/cache/runs/x", "/OPENAPI.json"]
)
def test_every_spelling_of_the_own_surface_stays_here(
    proxy: RunningProxy, fake: FakeLunary, path: str
) -> None:
    answer = proxy.client.delete(path, headers={"Authorization": "Bearer admin-token"})

    assert answer.status_code == 404
    assert fake.requests == []


def test_header_bytes_above_ascii_reach_the_upstream_unchanged(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    proxy.get("/v1/template_versions/latest", headers=[(b"X-Title", "café ✓".encode())])

    (seen,) = fake.requests
    assert seen.header(b"x-title") == "café ✓".encode()


def test_a_long_upstream_header_is_relayed_not_a_502(proxy: RunningProxy, fake: FakeLunary) -> None:
    fake.extra_headers = {"X-Long": "v" * 12_000}

    answer = proxy.get("/v1/template_versions/latest")

    assert answer.status_code == 200
    assert answer.headers["x-long"] == "v" * 12_000
