"""The upstream client alone, three adapters behind the same Upstream port, side by side: raw
aiohttp (the baseline, benchmarks/aiohttp_upstream.py), the proxy's own (httpx on the aiohttp
transport, proxy.upstream.LunaryUpstream) and stock httpx (benchmarks/httpx_upstream.py).

Each client fetches run bodies from the fast origin (30 ms latency, its own process) with 8 and
64 requests in flight, in rounds taken in turns. Prints the client process's CPU time per
request (what a miss costs the proxy's one core), the rate it reached, and both as ratios to
the baseline.

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

from benchmarks.aiohttp_upstream import AiohttpUpstream
from benchmarks.harness import free_ports, in_turns, median, origin_service
from benchmarks.httpx_upstream import HttpxUpstream
from proxy.cache.ports import Upstream, UpstreamRequest
from proxy.upstream import LunaryUpstream

BASELINE = "aiohttp"
CLIENTS: dict[str, Callable[[str], Upstream]] = {
    BASELINE: lambda url: AiohttpUpstream(url, 10, 100),
    "httpx-aiohttp": lambda url: LunaryUpstream(url, 10, 100),  # the proxy's
    "stock httpx": lambda url: HttpxUpstream(url, 10, 100),
}


async def drive(upstream: Upstream, requests: int, in_flight: int) -> tuple[float, float]:
    """(CPU seconds per request, requests per second) for `requests` fetches."""
    headers = [(b"authorization", b"Bearer bench"), (b"accept-encoding", b"identity")]
    # warm the pool and the code paths, unmeasured: a few requests per connection, not a run
    queue = iter(range(min(requests, in_flight * 8)))

    async def worker() -> None:
        for _ in queue:
            path = f"/v1/runs/{uuid.uuid4()}".encode()
            fetched = await upstream.fetch(UpstreamRequest("GET", path, b"", headers), 1 << 20)
            assert fetched.status == 200

    await asyncio.gather(*(worker() for _ in range(in_flight)))
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
            for in_flight in args.in_flight:
                for name in in_turns(list(CLIENTS), round_number):
                    cpu, rate = uvloop.run(measure(name, origin.url, args.requests, in_flight))
                    results[name, in_flight].append((cpu, rate))
                    print(
                        f"round {round_number + 1} {name:>13} in flight {in_flight:<3} "
                        f"CPU {cpu * 1e6:6.0f} us/request  {rate:6.0f} req/s",
                        flush=True,
                    )
    report(results, args.rounds, args.requests, args.in_flight)


def report(
    results: dict[tuple[str, int], list[tuple[float, float]]],
    rounds: int,
    requests: int,
    in_flights: list[int],
) -> None:
    """Medians per client, and each as a ratio to the baseline (CPU: lower is better)."""
    print(f"\nmedians over {rounds} rounds ({requests} requests, origin 30 ms)")
    print(
        f"{'in flight':>9} {'client':>13} {'CPU us/req':>10} {'req/s':>7} "
        f"{'CPU / ' + BASELINE:>14} {'req/s / ' + BASELINE:>16}"
    )
    for in_flight in in_flights:
        cpus = {n: median([c for c, _ in results[n, in_flight]]) for n in CLIENTS}
        rates = {n: median([r for _, r in results[n, in_flight]]) for n in CLIENTS}
        for name in CLIENTS:
            print(
                f"{in_flight:>9} {name:>13} {cpus[name] * 1e6:>10.0f} {rates[name]:>7.0f} "
                f"{cpus[name] / cpus[BASELINE]:>13.2f}x {rates[name] / rates[BASELINE]:>15.2f}x"
            )


if __name__ == "__main__":
    main()
