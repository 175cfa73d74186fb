"""What the Starlette routes table (proxy/web/app.py) costs on the hit path: the proxy against
the same endpoints dispatched by an if-chain (benchmarks/flat_dispatch.py, the dispatch before
issue 15), side by side on one Redis, the two taken in turns each round. The budget: CPU per hit
rises by at most 5 %.

    python -m benchmarks.dispatch [--rounds 3] [--seconds 10] [--connections 8 64]
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

    origin_port, routed_port, flat_port = free_ports(3)
    with (
        RedisServer() as redis,
        origin_service(origin_port) as origin,
        shared_proxy(routed_port, origin.url, redis.url, **HIT_SETTINGS) as routed,
        shared_proxy(
            flat_port, origin.url, redis.url, module="benchmarks.flat_dispatch", **HIT_SETTINGS
        ) as flat,
    ):
        services = {"starlette": routed, "flat": flat}
        measured = measure_hits(services, args.rounds, args.seconds, args.connections)

    print(f"\nmedians over {args.rounds} rounds (wrk, loopback, 1 worker each)")
    print_ratios(measured, "starlette", "flat", args.connections)


if __name__ == "__main__":
    main()
