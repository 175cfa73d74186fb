"""The upstream client alone: httpx against aiohttp behind the same Upstream port, side by side.

Each client fetches run bodies from the fast origin (30 ms latency, its own process) with 8 and
64 requests in flight, in rounds taken in turns. Prints the client process's CPU time per
request (what a miss costs the proxy's one core) and the rate it reached.

    python -m benchmarks.upstream_clients [--rounds 3] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import uvloop

from benchmarks.harness import free_ports, median, origin_service
from benchmarks.httpx_upstream import HttpxUpstream
from proxy.cache.ports import Upstream, UpstreamRequest
from proxy.upstream.client import AiohttpUpstream

CLIENTS: dict[str, Callable[[str], Upstream]] = {
    "httpx": lambda url: HttpxUpstream(url, 10, 100),
    "aiohttp": lambda url: AiohttpUpstream(url, 10, 100),
}


async def drive(upstream: Upstream, requests: int, in_flight: int) -> tuple[float, float]:
    """(CPU seconds per request, requests per second) for `requests` fetches."""
    headers = [(b"authorization", b"Bearer bench"), (b"accept-encoding", b"identity")]
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            path = f"/v1/runs/{uuid.uuid4()}".encode()
            fetched = await upstream.fetch(UpstreamRequest("GET", path, b"", headers), 1 << 20)
            assert fetched.status == 200

    await asyncio.gather(*(worker() for _ in range(in_flight // 4)))  # warm the pool
    queue = iter(range(requests))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / requests, requests / wall


async def measure(name: str, url: str, requests: int, in_flight: int) -> tuple[float, float]:
    upstream = CLIENTS[name](url)
    try:
        return await drive(upstream, requests, in_flight)
    finally:
        await upstream.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args()
    (port,) = free_ports(1)
    results: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    with origin_service(port, latency=0.03) as origin:
        for round_number in range(args.rounds):
            names = list(CLIENTS) if round_number % 2 == 0 else list(reversed(CLIENTS))
            for in_flight in args.in_flight:
                for name in names:
                    cpu, rate = uvloop.run(measure(name, origin.url, args.requests, in_flight))
                    results[name, in_flight].append((cpu, rate))
                    print(
                        f"round {round_number + 1} {name:>7} in flight {in_flight:<3} "
                        f"CPU {cpu * 1e6:6.0f} us/request  {rate:6.0f} req/s",
                        flush=True,
                    )
    print(f"\nmedians over {args.rounds} rounds ({args.requests} requests, origin 30 ms)")
    for in_flight in args.in_flight:
        row = {name: results[name, in_flight] for name in CLIENTS}
        cpus = {name: median([c for c, _ in runs]) for name, runs in row.items()}
        rates = {name: median([r for _, r in runs]) for name, runs in row.items()}
        print(
            f"in flight {in_flight:<3} "
            + "  ".join(f"{n}: {cpus[n] * 1e6:.0f} us CPU, {rates[n]:.0f} req/s" for n in CLIENTS)
            + f"  httpx/aiohttp CPU {cpus['httpx'] / cpus['aiohttp']:.1f}x"
        )


if __name__ == "__main__":
    main()
