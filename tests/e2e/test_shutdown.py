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
            await asyncio.sleep(0.3)  # both are now waiting on the slow upstream
            os.kill(process.pid, signal.SIGTERM)
            await asyncio.sleep(0.2)
            refused = None
            try:
                await httpx.AsyncClient().get(proxy.url + "/healthz", timeout=2)
            except httpx.ConnectError as exc:
                refused = exc
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
