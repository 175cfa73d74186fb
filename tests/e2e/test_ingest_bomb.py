"""Ingest bombs (`{"events":[{},{},...]}` up to the body limit) cost the proxy neither its
memory nor its event loop: reading a body for invalidation is bounded and done in short steps."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx

from tests.servers import ProxyProcess, free_port

MAX_REQUEST_BYTES = 20 * 1024 * 1024
BOMBS = 4  # at once
ROUNDS = 3  # of BOMBS at once: enough /healthz samples that p99 is not just the worst one
# A whole-body parse held the loop 4-10 s. With the bounded reader, and the bombs sent from a
# process of their own: p99 10-21 ms over four runs on a 2-core machine.
HEALTHZ_P99 = 0.050
MIB = 1024 * 1024

# An upstream that reads each request whole and answers ingest's 200, in a process of its own:
# the fake Lunary parses ingest bodies (hundreds of MB and seconds of CPU per bomb, in this very
# process), which would measure the test rather than the proxy.
SINK = """
import sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json; charset=utf-8")]})
    await send({"type": "http.response.body", "body": b'{"results":[]}'})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", lifespan="off")
"""


@contextlib.contextmanager
def ingest_sink() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert process.poll() is None, "the sink exited"
            assert time.monotonic() < deadline, "the sink did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# Sends `count` bombs (`{"events":[{},{},...]}` of exactly `size` bytes: millions of events
# naming no run) at once from a process of its own and prints their statuses: four uploading
# threads in the test process would make the poller wait for the GIL,
# and /healthz would measure the test's client rather than the proxy.
BOMBER = """
import http.client, sys, threading

port, count, size = (int(arg) for arg in sys.argv[1:])
head, tail = b'{"events":[{}', b"]}"
body = head + b",{}" * ((size - len(head) - len(tail)) // 3) + tail
body += b" " * (size - len(body))
statuses = []

def send():
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/runs/ingest", body=body)
    statuses.append(connection.getresponse().status)

threads = [threading.Thread(target=send) for _ in range(count)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(" ".join(map(str, statuses)))
"""


def send_bombs(port: int, count: int, size: int) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", BOMBER, str(port), str(count), str(size)],
        capture_output=True,
        timeout=90,
        check=True,
    )
    return [int(status) for status in done.stdout.split()]


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class HealthPoller:
    """GET /healthz every ~10 ms on one keep-alive connection, timing each answer."""

    def __init__(self, url: str) -> None:
        self._url = url + "/healthz"
        self.latencies: list[float] = []
        self.statuses: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                sent = time.perf_counter()
                self.statuses.add(client.get(self._url).status_code)
                self.latencies.append(time.perf_counter() - sent)
                time.sleep(0.01)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_parallel_ingest_bombs_keep_memory_bounded_and_the_loop_free() -> None:
    size = MAX_REQUEST_BYTES - 64  # each bomb, just under the limit: built by BOMBER
    settings = {"PROXY_LOG_LEVEL": "error", "PROXY_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES)}
    with ingest_sink() as sink, ProxyProcess(PROXY_UPSTREAM_URL=sink, **settings) as proxy:
        pid = proxy.process.pid
        # one small ingest first, so what the first one loads and allocates counts as idle
        warm = httpx.post(proxy.url + "/v1/runs/ingest", json={"events": []}, timeout=10)
        assert warm.status_code == 200
        idle_kib = memory_kib(pid, "VmRSS")

        answers: list[int] = []
        with HealthPoller(proxy.url) as poller:
            for _ in range(ROUNDS):
                answers += send_bombs(proxy.port, BOMBS, size)
        peak_kib = memory_kib(pid, "VmHWM")

    latencies = poller.latencies
    in_flight_kib = BOMBS * size // 1024
    print(
        f"idle RSS {idle_kib / 1024:.0f} MiB, peak {peak_kib / 1024:.0f} MiB, "
        f"bodies {in_flight_kib / 1024:.0f} MiB; /healthz n={len(latencies)} "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms max {max(latencies) * 1000:.1f} ms"
    )
    assert answers == [200] * BOMBS * ROUNDS
    assert len(latencies) >= 50
    assert poller.statuses == {200}
    assert peak_kib < 2 * idle_kib + in_flight_kib
    assert percentile(latencies, 0.99) < HEALTHZ_P99
