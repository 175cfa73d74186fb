"""The proxy's HTTP protocol: requests it cannot take are refused in JSON, headers are bounded."""

from __future__ import annotations

import socket

import orjson
import pytest

from proxy.server import MAX_HEADER_BYTES
from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary


def exchange(proxy: RunningProxy, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer to EOF: status, headers and body."""
    host, port = proxy.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split(" ")[1]), headers, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/runs/x HTTP/1.1\r\nHost: p\r\nBad Header Name: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ],
    ids=["bad-header-name", "tls-to-plain-port", "two-content-lengths"],
)
def test_an_unparsable_request_gets_a_json_400(
    make_proxy: ProxyFactory, fake: FakeLunary, request_bytes: bytes
) -> None:
    proxy = make_proxy()

    status, headers, body = exchange(proxy, request_bytes)

    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert orjson.loads(body)["error"] == "bad_request"
    assert fake.requests == []


def test_headers_over_the_bound_get_431_and_are_never_forwarded(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    request = b"GET /v1/template_versions/latest HTTP/1.1\r\nHost: p\r\n%s\r\n"
    near = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))  # ~61 KB
    over = b"X-Pad: %s\r\n" % (b"v" * MAX_HEADER_BYTES)

    fits = exchange(proxy, request % (near + b"Connection: close\r\n"))
    refused = exchange(proxy, request % over)

    assert fits[0] == 200
    assert refused[0] == 431
    assert orjson.loads(refused[2])["error"] == "headers_too_large"
    assert len(fake.requests) == 1
