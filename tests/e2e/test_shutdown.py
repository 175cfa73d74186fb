"""SIGTERM: stop accepting, let requests in flight finish, then close every client."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import h11
import httpx

from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, ServerThread, raw_exchange

PROBE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def whole_answer(answer: bytes) -> tuple[int, bytes]:
    """Status and body of one complete HTTP/1.1 answer to PROBE, nothing after it; an
    AssertionError for anything else (an answer cut short is a half answer)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/healthz", headers=[("Host", "127.0.0.1")]))
    client.send(h11.EndOfMessage())
    client.receive_data(answer)
    client.receive_data(b"")  # the server closed: a cut answer raises instead of waiting
    status, body = 0, b""
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as exc:
            raise AssertionError(f"not one whole answer: {answer!r}") from exc
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert client.trailing_data == (b"", True), f"more after the answer: {answer!r}"
            return status, body
        else:
            raise AssertionError(f"not one whole answer: {answer!r}")


def probe(port: int) -> tuple[str, bytes]:
    """One request on a new connection: ("refused", b""), ("unanswered", b"") when it was
    accepted and then closed or reset before any byte of an answer, else ("answered", bytes).
    An answer that never ends fails in raw_exchange."""
    try:
        answer = raw_exchange(port, PROBE, timeout=5)
    except ConnectionRefusedError:
        return "refused", b""
    return ("answered" if answer else "unanswered"), answer


async def probe_until_refused(port: int, within: float) -> list[tuple[str, bytes]]:
    """New connections one after another until one is refused (the listener is closed)."""
    outcomes: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        outcomes.append(await asyncio.to_thread(probe, port))
        if outcomes[-1][0] == "refused":
            break
        await asyncio.sleep(0.01)
    return outcomes


async def test_requests_in_flight_finish_after_sigterm(
    upstream: ServerThread, fake: FakeLunary, redis_url: str
) -> None:
    """Requests being served when SIGTERM comes get their whole answer. A request that
    arrives meanwhile gets a whole, right answer while the listener is still open, else none
    at all: its connection is refused, or accepted by the kernel just before the listener
    closed and then reset or closed unanswered, which an HTTP client must expect of any
    server going away. Once one goes unanswered, none is answered again."""
    key, run = fake.add_key(), fake.add_run()
    fake.latency = 1.0
    proxy = ProxyProcess(
        PROXY_UPSTREAM_URL=upstream.url, PROXY_REDIS_URL=redis_url, PROXY_SCOPE_SECRET="s"
    )
    with proxy:
        process = proxy.process
        healthy = whole_answer((await asyncio.to_thread(probe, proxy.port))[1])
        async with httpx.AsyncClient(timeout=10) as client:
            read = asyncio.create_task(
                client.get(f"{proxy.url}/v1/runs/{run}", headers={"X-API-Key": key})
            )
            passthrough = asyncio.create_task(
                client.post(f"{proxy.url}/echo", content=b"x" * 100_000)
            )
            deadline = time.monotonic() + 5
            while fake.in_flight < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 - another thread
                await asyncio.sleep(0.02)  # until both wait on the slow upstream
            assert fake.in_flight == 2
            os.kill(process.pid, signal.SIGTERM)
            outcomes = await probe_until_refused(proxy.port, within=5)
            answered, echoed = await read, await passthrough
        started = time.monotonic()
        exit_code = await asyncio.to_thread(process.wait, 15)
        waited = time.monotonic() - started

    kinds = [kind for kind, _ in outcomes]
    served = kinds.count("answered")
    assert healthy[0] == 200
    assert answered.status_code == 200
    assert answered.json()["id"] == run
    assert echoed.status_code == 201
    assert echoed.content == b"x" * 100_000
    assert kinds[-1] == "refused", kinds  # no new connections once shutting down
    assert kinds[:served] == ["answered"] * served, kinds  # none answered after a refusal
    assert [whole_answer(answer) for _, answer in outcomes[:served]] == [healthy] * served
    assert exit_code in (0, -signal.SIGTERM)
    assert waited < 5
    assert "Application shutdown complete" in proxy.final_log
