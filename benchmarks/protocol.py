"""What the proxy's own HTTP protocol (proxy/web/server.py: client timeouts, head bound, safe
refusals) costs on the hit path: the same app served by it and by uvicorn's stock httptools
protocol, side by side on one Redis, the two taken in turns each round.

    python -m benchmarks.protocol [--rounds 3] [--seconds 10] [--connections 8 64]
"""

from __future__ import annotations

import argparse

from benchmarks.harness import free_ports, origin_service, require, shared_proxy
from benchmarks.side_by_side import (
    HIT_SETTINGS,
    add_round_arguments,
    measure_hits,
    print_ratios,
)
from tests.servers import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_round_arguments(parser)
    args = parser.parse_args()
    require("wrk", "redis-server")

    origin_port, guarded_port, stock_port = free_ports(3)
    with (
        RedisServer() as redis,
        origin_service(origin_port) as origin,
        shared_proxy(guarded_port, origin.url, redis.url, **HIT_SETTINGS) as guarded,
        shared_proxy(
            stock_port, origin.url, redis.url, module="benchmarks.stock_server", **HIT_SETTINGS
        ) as stock,
    ):
        services = {"guarded": guarded, "stock": stock}
        measured = measure_hits(services, args.rounds, args.seconds, args.connections)

    print(f"\nmedians over {args.rounds} rounds (wrk, loopback, 1 worker each)")
    print_ratios(measured, "guarded", "stock", args.connections)


if __name__ == "__main__":
    main()
