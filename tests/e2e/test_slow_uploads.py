"""Request bodies are read whole before the upstream request starts (nginx's
`proxy_request_buffering on`), and cache fills have a connection pool of their own: slow uploads
and slow passthrough answers starve no one, a body past the in-memory bound is spooled to a
temporary file within a process-wide budget, and an upload never finished never reaches Lunary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from config.settings import ConfigError, Settings, load_settings
from proxy.web.asgi import Receive, Scope, Send
from tests.conftest import SCOPE_SECRET, ProxyFactory
from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, ServerThread

ATTACKERS = 150
ATTACK_SECONDS = 7.0
UPSTREAM_TIMEOUT = 4.0
SLOW_PATH = b"/v1/slow-uploads"


@dataclass
class Gate:
    """In front of the fake Lunary: notes each request's path the moment its head arrives (the
    fake records a request only once its body is whole, so an upload cut half-way would go
    unseen), and holds `?slug=slow` passthrough reads for `slow_for` seconds."""

    fake: FakeLunary
    slow_for: float = 0.0
    heads: list[bytes] = field(default_factory=list)
    slow_in_flight: int = 0
    slow_max_in_flight: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.heads.append(scope["raw_path"])
            if scope["query_string"] == b"slug=slow":
                self.slow_in_flight += 1
                self.slow_max_in_flight = max(self.slow_max_in_flight, self.slow_in_flight)
                try:
                    await asyncio.sleep(self.slow_for)
                finally:
                    self.slow_in_flight -= 1
        await self.fake(scope, receive, send)

    def seen(self, path: bytes) -> int:
        return self.heads.count(path)


@pytest.fixture
def gate(fake: FakeLunary) -> Iterator[tuple[Gate, ServerThread]]:
    gate = Gate(fake)
    with ServerThread(gate) as server:
        yield gate, server


def spooled_files() -> int:
    """Unlinked files under the temp directory this process holds open (as TemporaryFile
    makes them): the proxies of these tests run in this process."""
    prefix, count = tempfile.gettempdir() + "/", 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            count += target.startswith(prefix) and target.endswith(" (deleted)")
    return count


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


# -- slow uploads and slow passthrough starve no one ----------------------------------------


async def slow_upload(port: int, seconds: float) -> None:
    """Declare 100,000 bytes, send one a second for `seconds`, then go away."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST %s HTTP/1.1\r\nHost: p\r\nContent-Length: 100000\r\n\r\n" % SLOW_PATH)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(1)
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def summary(seconds: list[float]) -> str:
    if len(seconds) < 2:
        return f"n={len(seconds)} {[round(s * 1000) for s in seconds]} ms"
    p99 = statistics.quantiles(seconds, n=100, method="inclusive")[98]
    return (
        f"n={len(seconds)} p50={statistics.median(seconds) * 1000:.0f} ms "
        f"p99={p99 * 1000:.0f} ms max={max(seconds) * 1000:.0f} ms"
    )


async def timed(client: httpx.AsyncClient, path: str, key: str) -> tuple[int, float]:
    started = time.perf_counter()
    answer = await client.get(path, headers={"X-API-Key": key})
    return answer.status_code, time.perf_counter() - started


async def test_slow_uploads_hold_no_upstream_connection_and_starve_no_one(
    fake: FakeLunary, gate: tuple[Gate, ServerThread]
) -> None:
    counter, upstream = gate
    key = fake.add_key()
    settings = {
        "PROXY_UPSTREAM_URL": upstream.url,
        "PROXY_SCOPE_SECRET": SCOPE_SECRET,
        # today's code took one of these per upload as its head arrived
        "PROXY_UPSTREAM_MAX_CONNECTIONS": "20",
        "PROXY_UPSTREAM_TIMEOUT": str(UPSTREAM_TIMEOUT),
        "PROXY_LOG_LEVEL": "warning",
    }
    with ProxyProcess(**settings) as proxy:
        started = time.monotonic()
        attack = [
            asyncio.create_task(slow_upload(proxy.port, ATTACK_SECONDS)) for _ in range(ATTACKERS)
        ]
        await asyncio.sleep(1.5)  # every upload has begun
        latencies: dict[str, list[float]] = {"miss": [], "passthrough": []}
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=proxy.url, timeout=3 * UPSTREAM_TIMEOUT) as client:
            while time.monotonic() < started + ATTACK_SECONDS - 0.5:
                for kind, path in (
                    ("miss", f"/v1/runs/{fake.add_run()}"),
                    ("passthrough", f"/v1/template_versions/latest?slug={len(statuses)}"),
                ):
                    status, seconds = await timed(client, path, key)
                    statuses.append(status)
                    latencies[kind].append(seconds)
                await asyncio.sleep(0.1)
        attackers_alive = sum(not task.done() for task in attack)
        await asyncio.gather(*attack)

    every = latencies["miss"] + latencies["passthrough"]
    figures = {kind: summary(values) for kind, values in latencies.items()}
    print(f"\nduring {ATTACKERS} slow uploads: {figures}")
    assert set(statuses) == {200}, (statuses, figures)
    assert max(every) < UPSTREAM_TIMEOUT / 2, figures
    assert len(latencies["miss"]) >= 10, figures  # served all along, not once at the end
    assert attackers_alive == ATTACKERS  # measured while every upload still trickled
    assert counter.seen(SLOW_PATH) == 0  # no upload was finished, so none went upstream


async def test_slow_passthrough_answers_cannot_starve_cache_fills(
    make_proxy: ProxyFactory, fake: FakeLunary, gate: tuple[Gate, ServerThread]
) -> None:
    counter, upstream = gate
    counter.slow_for = 2.0
    proxy = make_proxy(upstream_url=upstream.url, upstream_max_connections=2, upstream_timeout=4)
    key = fake.add_key()
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
        slow_path = "/v1/template_versions/latest?slug=slow"
        slow = [asyncio.create_task(client.get(slow_path)) for _ in range(3)]
        await until(lambda: counter.slow_in_flight == 2)  # the passthrough pool is taken
        misses = [await timed(client, f"/v1/runs/{fake.add_run()}", key) for _ in range(5)]
        slow_statuses = [answer.status_code for answer in await asyncio.gather(*slow)]

    assert [status for status, _ in misses] == [200] * 5
    assert max(seconds for _, seconds in misses) < 0.8, misses  # no wait for passthrough
    assert slow_statuses == [200] * 3
    assert counter.slow_max_in_flight == 2  # PROXY_UPSTREAM_MAX_CONNECTIONS bounds passthrough


# -- buffering: in memory, then spooled, within a budget ------------------------------------


async def test_a_body_past_the_memory_bound_is_spooled_and_reaches_the_upstream_whole(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(request_buffer_bytes=64 * 1024, request_spool_bytes=1_000_000)
    payload = bytes(range(256)) * 2_000  # 512,000 bytes
    baseline = spooled_files()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    head = b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n" % len(payload)
    writer.write(head + payload[:300_000])
    await until(lambda: spooled_files() == baseline + 1)  # on disk, not yet upstream
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
        # 300,000 spooled + 800,000 would pass the budget of 1,000,000: refused for now
        refused = await client.post("/echo", content=b"r" * 800_000)
        writer.write(payload[300_000:])
        echoed = await reader.readuntil(b"\r\n\r\n")
        echoed_body = await reader.readexactly(len(payload))
        writer.close()
        await until(lambda: spooled_files() == baseline)  # closed, its budget given back
        accepted = await client.post("/echo", content=b"r" * 800_000)

    assert refused.status_code == 503
    assert refused.json()["error"] == "request_buffer_full"
    assert refused.headers["retry-after"] == "1"
    assert echoed.startswith(b"HTTP/1.1 201 ")
    assert echoed_body == payload
    assert accepted.status_code == 201
    assert [seen.body for seen in fake.requests] == [payload, b"r" * 800_000]


def test_a_body_that_cannot_be_spooled_gets_503_and_never_reaches_the_upstream(
    make_proxy: ProxyFactory,
    gate: tuple[Gate, ServerThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    counter, upstream = gate
    proxy = make_proxy(upstream_url=upstream.url, request_buffer_bytes=1000)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))  # as a full or absent /tmp

    in_memory = proxy.client.post("/echo", content=b"m" * 1000)
    refused = proxy.client.post("/echo", content=b"s" * 1001)

    assert in_memory.status_code == 201
    assert refused.status_code == 503
    assert refused.json()["error"] == "request_buffer_full"
    assert counter.heads == [b"/echo"]
    assert "cannot spool a request body" in caplog.text


def test_a_chunked_body_goes_upstream_whole_with_its_length_and_ingest_reads_the_spool(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(request_buffer_bytes=1000)
    key, run = fake.add_key(), fake.add_run()
    pieces = [b"%d," % i * 500 for i in range(20)]
    event = {"type": "llm", "event": "end", "runId": run, "output": "x" * 5000}
    events = orjson.dumps({"events": [event]})

    def read() -> str:
        return proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key}).headers["x-cache"]

    small = proxy.client.post("/echo", content=iter(pieces[:1]))  # in memory
    large = proxy.client.post("/echo", content=iter(pieces))  # spooled
    cached = [read(), read()]
    ingest = proxy.client.post(
        "/v1/runs/ingest",
        content=iter([events[:3000], events[3000:]]),
        headers={"X-API-Key": key, "Content-Type": "application/json"},  # else Lunary reads none
    )
    after = read()

    assert small.content == pieces[0]
    assert large.content == b"".join(pieces)
    assert ingest.status_code == 200
    # the spooled events were read back for the ingest parser: the run was dropped
    assert [*cached, after] == ["MISS", "HIT", "MISS"]
    # read whole first, so sent with its length, never chunked as it came
    uploads = [seen for seen in fake.requests if seen.method == "POST"]
    for seen, body in zip(uploads, (pieces[0], b"".join(pieces), events), strict=True):
        assert seen.body == body
        assert seen.header(b"content-length") == b"%d" % len(body)
        assert seen.header(b"transfer-encoding") is None


async def test_an_upload_cut_half_way_never_reaches_the_upstream(
    make_proxy: ProxyFactory, gate: tuple[Gate, ServerThread]
) -> None:
    counter, upstream = gate
    proxy = make_proxy(upstream_url=upstream.url, request_buffer_bytes=10_000)
    baseline = spooled_files()
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    head = b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: 100000\r\n\r\n"
    writer.write(head + b"x" * 50_000)  # half: past the memory bound, so on disk
    await until(lambda: spooled_files() == baseline + 1)
    await asyncio.sleep(0.3)  # what a forwarded head would need to reach the upstream
    heads_while_sending = list(counter.heads)
    writer.close()
    await until(lambda: spooled_files() == baseline)  # dropped with the connection
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
        whole = await client.post("/echo", content=b"y" * 100_000)

    assert heads_while_sending == []
    assert whole.status_code == 201
    assert counter.heads == [b"/echo"]  # only the finished one


def over_the_limit() -> Iterator[bytes]:
    """120,000 bytes in two pieces, a moment apart: an upload that passes the limit late."""
    yield b"y" * 60_000
    time.sleep(0.3)
    yield b"y" * 60_000


def test_bodies_over_the_request_limit_get_413_and_never_reach_the_upstream(
    make_proxy: ProxyFactory, gate: tuple[Gate, ServerThread]
) -> None:
    counter, upstream = gate
    proxy = make_proxy(
        upstream_url=upstream.url, max_request_bytes=100_000, request_buffer_bytes=10_000
    )

    declared = proxy.client.post("/echo", content=b"x" * 100_001)
    streamed = proxy.client.post("/echo", content=over_the_limit())
    fits = proxy.client.post("/echo", content=iter([b"z" * 50_000] * 2))

    assert declared.status_code == streamed.status_code == 413
    assert streamed.json()["error"] == "payload_too_large"
    assert fits.status_code == 201
    assert counter.heads == [b"/echo"]  # the one that fits; the streamed one never began


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("PROXY_REQUEST_BUFFER_BYTES", "-1", "greater than or equal to 0"),
        ("PROXY_REQUEST_SPOOL_BYTES", "1.5", "valid integer"),
        ("PROXY_FILL_MAX_CONNECTIONS", "0", "greater than or equal to 1"),
    ],
)
def test_the_buffer_and_pool_settings_have_defaults_and_are_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for variable in [v for v in os.environ if v.startswith("PROXY_")]:
        monkeypatch.delenv(variable)
    defaults = Settings()
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert defaults.request_buffer_bytes == 1_048_576
    assert defaults.request_spool_bytes == 536_870_912
    assert defaults.fill_max_connections == defaults.upstream_max_connections == 100
    assert str(raised.value).startswith(f"{name}: ")
    assert fragment in str(raised.value)
