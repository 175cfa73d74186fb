"""What the proxy's own HTTP protocol (proxy/server.py: client timeouts, head bound, safe
refusals) costs on the hit path: the same app served by it and by uvicorn's stock httptools
protocol, side by side on one Redis, the two taken in turns each round.

    python -m benchmarks.protocol [--rounds 3] [--seconds 10] [--connections 8 64]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

from benchmarks.harness import (
    SCOPE_SECRET,
    WrkResult,
    cpu_seconds,
    cycling_requests,
    free_ports,
    median,
    origin_service,
    require,
    service,
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
    redis = RedisServer()
    redis.start()
    settings = {"cache_ttl": "3600"}  # every measured answer a fresh hit
    stock_env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    try:
        with origin_service(origin_port) as origin:
            stock_env.update(
                PROXY_HOST="127.0.0.1", PROXY_PORT=str(stock_port), PROXY_CACHE_TTL="3600",
                PROXY_UPSTREAM_URL=origin.url, PROXY_REDIS_URL=redis.url,
                PROXY_SCOPE_SECRET=SCOPE_SECRET,
            )  # fmt: skip
            command = [sys.executable, "-m", "benchmarks.stock_server"]
            with (
                shared_proxy(guarded_port, origin.url, redis.url, **settings) as guarded,
                service("stock", command, stock_port, stock_env) as stock,
            ):
                services = {"guarded": guarded, "stock": stock}
                for system in services.values():
                    warm(system.url, targets, "x-cache")
                    wrk(system.url, lua, connections=8, seconds=2)  # warm, unmeasured
                results: dict[tuple[str, int], list[WrkResult]] = defaultdict(list)
                cpu: dict[tuple[str, int], list[float]] = defaultdict(list)
                names = list(services)
                for round_number in range(args.rounds):
                    for connections in args.connections:
                        turn = names[round_number % 2 :] + names[: round_number % 2]
                        for name in turn:
                            pid = services[name].pid
                            before = cpu_seconds(pid)
                            result = wrk(
                                services[name].url, lua, connections=connections,
                                seconds=args.seconds,
                            )  # fmt: skip
                            used = cpu_seconds(pid) - before
                            results[name, connections].append(result)
                            cpu[name, connections].append(used / max(result.requests, 1) * 1e6)
                            print(
                                f"round {round_number + 1} {name:>7} c={connections:<3} "
                                f"{result.rate:>7.0f} req/s  p99 {result.p99_ms:6.2f} ms  "
                                f"errors {result.errors}  CPU {cpu[name, connections][-1]:.0f} "
                                "us/request",
                                flush=True,
                            )
    finally:
        redis.close()

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
