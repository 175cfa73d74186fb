"""The fault matrix: what each failure of Lunary, Redis or a client does to the answers.

The README's "Fault matrix" lists every fault with its test; the faults tested elsewhere (a slow
upstream, invalid JSON, an over-limit body, a slow or killed Redis, an over-limit request body)
keep their tests there. These are the rest: an upstream that resets mid-body, a value under one
of our keys that we did not write, a Redis out of memory, and clients too slow to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import SCOPE_SECRET, ProxyFactory
from tests.fake_lunary import FakeLunary
from tests.prometheus import value
from tests.servers import ProxyProcess, RawServer, RedisServer, ServerThread

# -- Lunary resets the connection half-way through a body ----------------------------------------


class ResettingUpstream(RawServer):
    """An upstream that answers 200 with a body it cuts off with a reset half-way."""

    def __init__(self, length: int, sent: int) -> None:
        super().__init__()
        self.length, self.sent = length, sent

    def answer(self, conn: socket.socket) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % self.length
        )
        conn.sendall(head + b'{"id":"' + b"x" * (self.sent - 7))
        time.sleep(0.5)  # let the proxy read what was sent before the reset
        # SO_LINGER 0: close() sends a RST, not a FIN
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


RUN = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def test_upstream_reset_mid_body_is_a_502_and_nothing_is_stored(make_proxy: ProxyFactory) -> None:
    with ResettingUpstream(length=4000, sent=1000) as upstream:
        proxy = make_proxy(upstream_url=upstream.url)

        answers = [proxy.get(f"/v1/runs/{RUN}", headers={"X-API-Key": "k"}) for _ in range(2)]
        health = proxy.get("/healthz")

    assert [a.status_code for a in answers] == [502, 502]
    assert answers[0].json()["error"] == "upstream_unreachable"
    assert upstream.requests == 2  # the cut body was never stored
    assert health.status_code == 200


def test_upstream_reset_mid_streamed_body_truncates_the_answer(make_proxy: ProxyFactory) -> None:
    # over PROXY_MAX_ENTRY_BYTES the body is relayed as it arrives, so the status is out
    # before the reset: the client must see a cut answer, never a complete wrong one
    with ResettingUpstream(length=200_000, sent=50_000) as upstream:
        proxy = make_proxy(upstream_url=upstream.url, max_entry_bytes=10_000)

        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                proxy.get(f"/v1/runs/{RUN}", headers={"X-API-Key": "k"})
        health = proxy.get("/healthz")

    assert upstream.requests == 2
    assert health.status_code == 200


# -- a value under one of our keys that the proxy did not write --------------------------------


@pytest.mark.parametrize(
    ("kind", "counted"),
    [("garbage", True), ("truncated", True), ("foreign-json", True), ("foreign-type", False)],
)
def test_a_corrupt_or_foreign_value_is_a_miss_and_is_replaced(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    redis_url: str,
    redis_server: RedisServer,
    kind: str,
    counted: bool,
) -> None:
    proxy = make_proxy(redis_url=redis_url)
    key, run = fake.add_key(), fake.add_run(marker="the-real-body")
    headers = {"X-API-Key": key}
    first = proxy.get(f"/v1/runs/{run}", headers=headers)
    client = redis_server.client()
    (entry_key,) = client.keys(f"lcp:1:{{{run}}}:run:*")
    good = client.get(entry_key)
    assert good is not None
    client.delete(entry_key)
    if kind == "garbage":
        client.set(entry_key, b"\x00\xffnot an entry")
    elif kind == "truncated":
        client.set(entry_key, good[: len(good) // 2])
    elif kind == "foreign-json":
        client.set(entry_key, b'{"written": "by another app"}')
    else:
        client.hset(entry_key, "field", "value")  # MGET reads another type as nil

    after = proxy.get(f"/v1/runs/{run}", headers=headers)
    again = proxy.get(f"/v1/runs/{run}", headers=headers)
    metrics = proxy.get("/metrics").text

    assert first.headers["x-cache"] == "MISS"
    assert after.status_code == 200
    assert after.headers["x-cache"] == "MISS"
    assert after.content == first.content
    assert again.headers["x-cache"] == "HIT"
    assert again.content == first.content
    assert client.type(entry_key) == b"string"
    assert fake.count(run) == 2
    corrupt = value(metrics, "lunary_proxy_store_corrupt_entries_total")
    assert corrupt == (1.0 if counted else 0.0)


# -- Redis out of memory under `noeviction` ----------------------------------------------------


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    """A Redis of its own, whose memory limit a test may lower below what it holds."""
    with RedisServer("--maxmemory-policy", "noeviction") as server:
        yield server


def test_redis_out_of_memory_refuses_writes_and_still_serves_reads(
    make_proxy: ProxyFactory, fake: FakeLunary, small_redis: RedisServer
) -> None:
    proxy = make_proxy(redis_url=small_redis.url, cache_ttl=1)
    key = fake.add_key()
    cached, uncached = fake.add_run(), fake.add_run()
    headers = {"X-API-Key": key}
    assert proxy.get(f"/v1/runs/{cached}", headers=headers).headers["x-cache"] == "MISS"
    small_redis.client().config_set("maxmemory", 1)  # every write is now refused (OOM)

    refused = [proxy.get(f"/v1/runs/{uncached}", headers=headers) for _ in range(2)]
    served = proxy.get(f"/v1/runs/{cached}", headers=headers)
    ready = proxy.get("/readyz")
    metrics = proxy.get("/metrics").text
    time.sleep(1.2)  # the cached entry is stale now: no refresh of it could be stored
    expired = proxy.get(f"/v1/runs/{cached}", headers=headers)

    assert [r.status_code for r in refused] == [200, 200]
    assert [r.headers["x-cache"] for r in refused] == ["MISS", "MISS"]
    assert "detail=store-refused" in refused[0].headers["cache-status"]
    assert fake.count(uncached) == 2  # nothing could be stored
    assert served.headers["x-cache"] == "HIT"  # right after a refused write: no breaker
    assert expired.headers["x-cache"] == "MISS"  # fetched now, not STALE for the stale window
    assert fake.count(cached) == 2
    assert ready.status_code == 200
    assert value(metrics, "lunary_proxy_store_breaker_open") == 0.0
    # the first refusal (the lookup taking the fill lock) pauses writes: the saves are not even
    # tried, and the lookups after it take no lock
    assert value(metrics, "lunary_proxy_store_errors_total", operation="lookup", cause="oom") == 1
    assert value(metrics, "lunary_proxy_responses_not_stored_total", reason="store-refused") == 2


# -- clients too slow to send or to read -------------------------------------------------------

CLIENT_TIMEOUT = 3.0
BIG_BODY = 16_000_000


async def closed_after(reader: asyncio.StreamReader, started: float, limit: float) -> float:
    """Seconds from `started` until the server closed the connection (read everything)."""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass
    return time.monotonic() - started


async def trickle(writer: asyncio.StreamWriter, pieces: bytes, every: float) -> None:
    """Send a byte at a time, for ever (until the server cuts the connection)."""
    with contextlib.suppress(ConnectionError):
        for byte in pieces:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)


async def test_slow_clients_are_cut_by_the_client_timeout_and_starve_nobody(
    fake: FakeLunary, upstream: ServerThread
) -> None:
    key, run = fake.add_key(), fake.add_run()
    # over the entry limit, streamed to its reader; larger than any loopback socket buffers
    big = fake.add_run(size=BIG_BODY)
    settings = {
        "PROXY_UPSTREAM_URL": upstream.url,
        "PROXY_SCOPE_SECRET": SCOPE_SECRET,
        "PROXY_CLIENT_TIMEOUT": str(CLIENT_TIMEOUT),
        "PROXY_LOG_LEVEL": "warning",
    }
    with ProxyProcess(**settings) as proxy:
        host, port = "127.0.0.1", proxy.port
        started = time.monotonic()
        silent = [await asyncio.open_connection(host, port) for _ in range(10)]
        slowloris = [await asyncio.open_connection(host, port) for _ in range(5)]
        header = b"GET /v1/runs/%s HTTP/1.1\r\nHost: p\r\nX-Pad: " % run.encode()
        tricklers = [
            asyncio.create_task(trickle(w, header + b"a" * 100, 0.25)) for _, w in slowloris
        ]
        uploaders = [await asyncio.open_connection(host, port) for _ in range(3)]
        for _, writer in uploaders:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: 100000\r\n\r\n")
            writer.write(b"x" * 1000)  # then nothing more
        readers = []
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
            writer.write(b"GET /v1/runs/%s HTTP/1.1\r\nHost: p\r\nX-API-Key: %s\r\n\r\n" % (
                big.encode(), key.encode()))  # fmt: skip
            readers.append((reader, writer))

        # while all of them hold their connections, others are served as usual
        async with httpx.AsyncClient(base_url=proxy.url, timeout=CLIENT_TIMEOUT) as client:
            served = [
                await client.get(f"/v1/runs/{run}", headers={"X-API-Key": key}) for _ in range(20)
            ]
        served_within = time.monotonic() - started

        limit = 4 * CLIENT_TIMEOUT
        # all timed at once: timed one after another, the later ones' lower bounds would hold
        # however early they were cut
        cut = await asyncio.gather(
            *(closed_after(r, started, limit) for r, _ in [*silent, *slowloris, *uploaders])
        )
        silent_cut, slowloris_cut, uploads_cut = cut[:10], cut[10:15], cut[15:]
        # the readers' buffers filled at once; a send timer found no progress after one
        # period (two, if the kernel's buffers grew meanwhile): only then do they read
        await asyncio.sleep(max(0.0, started + 2 * CLIENT_TIMEOUT + 1 - time.monotonic()))
        received = []
        for reader, _ in readers:
            got = 0
            with contextlib.suppress(ConnectionError):  # what the kernel held, then the end
                async with asyncio.timeout(limit):
                    while chunk := await reader.read(65536):
                        got += len(chunk)
            received.append(got)
        for task in tricklers:
            task.cancel()
        for _, writer in [*silent, *slowloris, *uploaders, *readers]:
            writer.close()
        async with httpx.AsyncClient(base_url=proxy.url, timeout=2) as client:
            still_serving = (await client.get("/healthz")).status_code

    assert [r.status_code for r in served] == [200] * 20
    assert served_within < CLIENT_TIMEOUT  # nobody waited for the slow ones to be cut
    # headers are due whole within the timeout, however steadily they trickle
    assert all(CLIENT_TIMEOUT - 0.5 < t < CLIENT_TIMEOUT + 2 for t in silent_cut + slowloris_cut)
    assert all(CLIENT_TIMEOUT - 0.5 < t < 2 * CLIENT_TIMEOUT + 2 for t in uploads_cut)
    # a reader that stops reading gets a part of its answer, then the connection is aborted
    assert all(0 < got < BIG_BODY for got in received), received
    assert still_serving == 200


def test_an_upstream_slower_than_the_timeout_is_a_504_and_nothing_is_stored(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(upstream_timeout=0.3)
    key, run = fake.add_key(), fake.add_run(marker="late")
    fake.read_latency = 1.0
    timed_out = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})
    fake.read_latency = 0.0
    # the late answer (read as "late" before its pause) leaves the fake after the 504: wait
    # until it has, and then some, so a proxy that kept and stored it would have done so
    fake.runs[run]["metadata"]["marker"] = "current"
    deadline = time.monotonic() + 10
    while fake.in_flight:
        assert time.monotonic() < deadline, "the late answer never left the upstream"
        time.sleep(0.05)
    time.sleep(0.5)
    after = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key})

    assert timed_out.status_code == 504
    assert after.status_code == 200
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["metadata"]["marker"] == "current"  # not the late answer
    assert fake.count(run) == 2
