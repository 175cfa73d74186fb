"""Scaling: hit req/s of the proxy with PROXY_WORKERS=1 and 2, and how the load split.

Same hot set as benchmarks/hitpath.py (100 runs x 4 credentials, warmed), wrk at 64 connections,
rounds taken in turns. With 2 workers the kernel hands each keep-alive connection to one worker
for its whole life, so the script prints each worker's share of the CPU time too: a lopsided
split caps throughput at one worker's.

    python -m benchmarks.scaling [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from benchmarks.harness import (
    children,
    cycling_requests,
    free_ports,
    measured_wrk,
    median,
    origin_service,
    require,
    shared_proxy,
    wrk,
)
from benchmarks.hitpath import hit_targets, warm
from tests.servers import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    require("wrk", "redis-server")

    targets = hit_targets(100, 4)
    lua = cycling_requests(targets)
    origin_port, one_port, two_port = free_ports(3)
    rates: dict[int, list[float]] = defaultdict(list)
    with (
        RedisServer() as redis,
        origin_service(origin_port) as origin,
        shared_proxy(one_port, origin.url, redis.url, workers="1") as one,
        shared_proxy(two_port, origin.url, redis.url, workers="2") as two,
    ):
        warm(one.url, targets)  # both share the Redis entries
        proxies = {1: one, 2: two}
        for service in proxies.values():
            wrk(service.url, lua, connections=8, seconds=2)
        for round_number in range(args.rounds):
            order = [1, 2] if round_number % 2 == 0 else [2, 1]
            for workers in order:
                service = proxies[workers]
                pids = children(service.pid) if workers > 1 else [service.pid]
                result, used = measured_wrk(
                    service.url, lua, pids, connections=args.connections, seconds=args.seconds
                )
                shares = " / ".join(f"{u / max(sum(used), 1e-9):.0%}" for u in used)
                rates[workers].append(result.rate)
                print(
                    f"round {round_number + 1} workers={workers} {result.rate:>8.0f} req/s  "
                    f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}  "
                    f"CPU split {shares}  CPU {sum(used):.1f} s",
                    flush=True,
                )
    one_rate, two_rate = median(rates[1]), median(rates[2])
    print(
        f"\nmedian req/s: 1 worker {one_rate:.0f}, 2 workers {two_rate:.0f}, "
        f"ratio {two_rate / one_rate:.2f} (wrk shares the same 2 cores)"
    )


if __name__ == "__main__":
    main()
