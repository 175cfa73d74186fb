"""SIGTERM: stop accepting, let requests in flight finish, then close every client."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx

from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, ServerThread


async def test_requests_in_flight_finish_after_sigterm(
    upstream: ServerThread, fake: FakeLunary, redis_url: str
) -> None:
    key, run = fake.add_key(), fake.add_run()
    fake.latency = 1.0
    proxy = ProxyProcess(
        PROXY_UPSTREAM_URL=upstream.url, PROXY_REDIS_URL=redis_url, PROXY_SCOPE_SECRET="s"
    )
    with proxy:
        process = proxy.process
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
            refused = None
            async with httpx.AsyncClient(timeout=2) as fresh:
                while refused is None and time.monotonic() < deadline:
                    try:
                        await fresh.get(proxy.url + "/healthz")
                    except httpx.ConnectError as exc:
                        refused = exc
                    await asyncio.sleep(0.02)
            answered, echoed = await read, await passthrough
        started = time.monotonic()
        exit_code = await asyncio.to_thread(process.wait, 15)
        waited = time.monotonic() - started

    assert answered.status_code == 200
    assert answered.json()["id"] == run
    assert echoed.status_code == 201
    assert echoed.content == b"x" * 100_000
    assert refused is not None  # no new connections once shutting down
    assert exit_code in (0, -signal.SIGTERM)
    assert waited < 5
    assert "Application shutdown complete" in proxy.final_log
