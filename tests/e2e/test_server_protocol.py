"""The proxy's HTTP protocol (proxy/web/server.py): requests it cannot take are refused in JSON,
heads are bounded as they arrive, an Upgrade never smuggles a request,
a 100-continue client waits."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from proxy.web.server import MAX_HEADER_BYTES
from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary
from tests.servers import raw_answer, raw_exchange


def exchange(proxy: RunningProxy, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer to EOF: status, headers and body."""
    return raw_answer(proxy.port, request)


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


def test_an_upgrade_with_a_body_is_refused_so_the_body_is_never_a_request(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: p\r\n\r\n"
    request = (
        b"POST /echo HTTP/1.1\r\nHost: p\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
    )

    status, _, body = exchange(proxy, request)

    assert status == 400
    assert orjson.loads(body)["error"] == "bad_request"
    assert fake.requests == []


def test_an_upgrade_without_a_body_is_answered_then_the_connection_closed(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    request = (
        b"GET /v1/template_versions/latest?slug=a HTTP/1.1\r\nHost: p\r\nUpgrade: h2c\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
        b"GET /v1/template_versions/latest?slug=b HTTP/1.1\r\nHost: p\r\n\r\n"
    )

    status, _, body = exchange(proxy, request)

    assert status == 200
    assert orjson.loads(body)["slug"] == "a"
    assert b"HTTP/1.1" not in body  # one answer: what followed the upgrade was never parsed
    assert [seen.query_string for seen in fake.requests] == [b"slug=a"]
    assert fake.requests[0].header(b"upgrade") is None  # hop-by-hop


def test_an_endless_head_is_refused_as_it_arrives(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy()  # the header timeout is 60 s: the refusal must not wait for it

    status, _, body = exchange(proxy, b"GET /x HTTP/1.1\r\nX-Big: " + b"v" * 200_000)

    assert status == 431
    assert orjson.loads(body)["error"] == "headers_too_large"


# 70 KB arrives whole in one read with the first request, and only the parser's count sees it;
# 180 KB spans reads, and the count of bytes as they arrive refuses it
@pytest.mark.parametrize("size", [70_000, 180_000])
def test_a_pipelined_head_over_the_bound_is_never_served(
    make_proxy: ProxyFactory, fake: FakeLunary, size: int
) -> None:
    proxy = make_proxy()
    first = b"GET /v1/template_versions/latest?slug=a HTTP/1.1\r\nHost: p\r\n\r\n"
    second = b"GET /v1/template_versions/latest?slug=b HTTP/1.1\r\nX-Big: %s\r\n\r\n" % (
        b"v" * size
    )

    answer = raw_exchange(proxy.port, first + second)

    # the first may be answered, or cut with the connection (its answer was still owed when
    # the second head passed the bound): the second is never served
    assert b"slug=b" not in [seen.query_string for seen in fake.requests]
    assert answer.count(b"HTTP/1.1 200") <= 1


async def test_a_client_waiting_for_100_continue_is_asked_at_once_and_not_cut_while_the_proxy_waits(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    # one passthrough connection, held 2.5 s by a slow answer: the upload waits for it longer
    # than the client timeout, and its client rightly sends nothing before `100 Continue`
    proxy = make_proxy(client_timeout=1, upstream_max_connections=1, upstream_timeout=5)
    fake.latency = 2.5
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
        held = asyncio.create_task(client.get("/v1/template_versions/latest"))
        while not fake.in_flight:  # the slow answer holds the one passthrough connection
            assert not held.done(), "the slow answer ended before the upload was sent"
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 8)
        # `100 Continue` asks for the body at once: it is read whole before any upstream
        # connection is taken, so while the one connection is still busy
        upstream_busy_at_interim = fake.in_flight
        fake.latency = 0  # for the upload (the slow answer already sleeps)
        writer.write(b"hello")
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 8)
        writer.close()
        slow = await held

    assert interim.startswith(b"HTTP/1.1 100 ")
    assert upstream_busy_at_interim == 1
    # then it waited for the connection, longer than the client timeout, without being cut
    assert final.startswith(b"HTTP/1.1 201 ")
    assert slow.status_code == 200
