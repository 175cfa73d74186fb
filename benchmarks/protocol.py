"""What the proxy's own HTTP protocol (proxy/server.py: client timeouts, head bound, safe
refusals) costs on the hit path: the same app served by it and by uvicorn's stock httptools
protocol, side by side on one Redis, the two taken in turns each round.

    python -m benchmarks.protocol [--rounds 3] [--seconds 10] [--connections 8 64]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from benchmarks.harness import (
    WrkResult,
    cycling_requests,
    free_ports,
    in_turns,
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
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args()
    require("wrk", "redis-server")

    targets = hit_targets(100, 4)
    lua = cycling_requests(targets)
    origin_port, guarded_port, stock_port = free_ports(3)
    settings = {"cache_ttl": "3600"}  # every measured answer a fresh hit
    results: dict[tuple[str, int], list[WrkResult]] = defaultdict(list)
    cpu: dict[tuple[str, int], list[float]] = defaultdict(list)
    with (
        RedisServer() as redis,
        origin_service(origin_port) as origin,
        shared_proxy(guarded_port, origin.url, redis.url, **settings) as guarded,
        shared_proxy(
            stock_port, origin.url, redis.url, module="benchmarks.stock_server", **settings
        ) as stock,
    ):
        services = {"guarded": guarded, "stock": stock}
        for system in services.values():
            warm(system.url, targets)
            wrk(system.url, lua, connections=8, seconds=2)  # warm, unmeasured
        names = list(services)
        for round_number in range(args.rounds):
            for connections in args.connections:
                for name in in_turns(names, round_number):
                    result, used = measured_wrk(
                        services[name].url, lua, [services[name].pid],
                        connections=connections, seconds=args.seconds,
                    )  # fmt: skip
                    results[name, connections].append(result)
                    cpu[name, connections].append(sum(used) / max(result.requests, 1) * 1e6)
                    print(
                        f"round {round_number + 1} {name:>7} c={connections:<3} "
                        f"{result.rate:>7.0f} req/s  p99 {result.p99_ms:6.2f} ms  "
                        f"errors {result.errors}  CPU {cpu[name, connections][-1]:.0f} "
                        "us/request",
                        flush=True,
                    )

    print(f"\nmedians over {args.rounds} rounds (wrk, loopback, 1 worker each)")
    for connections in args.connections:
        guarded_runs, stock_runs = results["guarded", connections], results["stock", connections]
        rate = median([g.rate / s.rate for g, s in zip(guarded_runs, stock_runs, strict=True)])
        per_hit = median(
            [g / s for g, s in zip(cpu["guarded", connections], cpu["stock", connections],
                                   strict=True)]
        )  # fmt: skip
        print(
            f"c={connections}: guarded/stock hits/s {rate:.3f}, CPU per hit {per_hit:.3f} "
            f"({median(cpu['guarded', connections]):.0f} vs "
            f"{median(cpu['stock', connections]):.0f} us); errors "
            f"{sum(r.errors for r in guarded_runs + stock_runs)}"
        )


if __name__ == "__main__":
    main()
