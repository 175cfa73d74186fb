"""Redis killed mid-load under two proxy processes: no client errors, no stall, self-healing."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, RedisServer, ServerThread, replica_settings

LOAD_SECONDS = 3.0
WORKERS = 12
# far above the 0.25 s store timeout (CI machines are shared and slow), far below what a
# stalled client pool or a retry loop would cost
NO_STALL = 2.0


async def test_clients_see_no_errors_while_redis_dies_and_returns(
    upstream: ServerThread, redis_url: str, redis_server: RedisServer, fake: FakeLunary
) -> None:
    keys = [fake.add_key() for _ in range(2)]
    paths = [f"/v1/runs/{fake.add_run()}" for _ in range(20)]
    settings = replica_settings(upstream.url, redis_url, redis_timeout="0.25", log_level="error")
    results: list[tuple[float, int, str, float]] = []
    readiness: list[int] = []
    with ProxyProcess(**settings) as a, ProxyProcess(**settings) as b:
        urls = [a.url, b.url]
        requests = itertools.cycle(itertools.product(urls, paths, keys))
        async with httpx.AsyncClient(timeout=10) as client:
            started = time.monotonic()

            async def worker() -> None:
                while (now := time.monotonic() - started) < LOAD_SECONDS:
                    url, path, key = next(requests)
                    sent = time.monotonic()
                    answer = await client.get(url + path, headers={"X-API-Key": key})
                    results.append((now, answer.status_code, answer.headers["x-cache"],
                                    time.monotonic() - sent))  # fmt: skip

            async def chaos() -> None:
                await asyncio.sleep(1.0)
                await asyncio.to_thread(redis_server.stop)
                await asyncio.sleep(0.5)
                readiness.extend([(await client.get(u + "/readyz")).status_code for u in urls])
                await asyncio.sleep(0.5)
                await asyncio.to_thread(redis_server.start)

            await asyncio.gather(chaos(), *(worker() for _ in range(WORKERS)))
            # after the restart, caching resumes by itself within seconds
            deadline, healed = time.monotonic() + 5, set[str]()
            while time.monotonic() < deadline and healed != set(urls):
                for url in urls:
                    answer = await client.get(url + paths[0], headers={"X-API-Key": keys[0]})
                    if answer.headers["x-cache"] == "HIT":
                        healed.add(url)
                await asyncio.sleep(0.1)
            ready_again = [(await client.get(u + "/readyz")).status_code for u in urls]

    assert len(results) > 50
    assert {status for _, status, _, _ in results} == {200}
    assert max(latency for *_, latency in results) < NO_STALL
    during = {cache for at, _, cache, _ in results if 1.2 < at < 1.9}
    assert during == {"BYPASS"}
    assert "HIT" in {cache for at, _, cache, _ in results if at < 1.0}
    assert readiness == [503, 503]
    assert healed == set(urls)
    assert ready_again == [200, 200]
