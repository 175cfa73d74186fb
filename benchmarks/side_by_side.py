"""Two ways of serving the hit path, measured side by side: the same hot targets through each,
taken in turns each round, with wrk's rate and latency and the server's CPU per hit.
benchmarks/protocol.py and benchmarks/revisions.py compare through it."""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from benchmarks.harness import (
    Service,
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

# every measured answer a fresh hit
HIT_SETTINGS = {"cache_ttl": "3600"}


@dataclass
class Rounds:
    """What each service did, per number of connections, round by round."""

    results: dict[tuple[str, int], list[WrkResult]] = field(
        default_factory=lambda: defaultdict(list)
    )
    cpu_per_hit_us: dict[tuple[str, int], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )


def add_round_arguments(parser: argparse.ArgumentParser) -> None:
    """--rounds, --seconds and --connections, as every side-by-side comparison takes them."""
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 64])


def measure_hits(
    services: Mapping[str, Service], rounds: int, seconds: float, connections: Sequence[int]
) -> Rounds:
    targets = hit_targets(100, 4)
    lua = cycling_requests(targets)
    for system in services.values():
        warm(system.url, targets)
        wrk(system.url, lua, connections=8, seconds=2)  # warm, unmeasured
    measured = Rounds()
    for round_number in range(rounds):
        for count in connections:
            for name in in_turns(list(services), round_number):
                result, used = measured_wrk(
                    services[name].url, lua, [services[name].pid],
                    connections=count, seconds=seconds,
                )  # fmt: skip
                measured.results[name, count].append(result)
                per_hit = sum(used) / max(result.requests, 1) * 1e6
                measured.cpu_per_hit_us[name, count].append(per_hit)
                print(
                    f"round {round_number + 1} {name:>7} c={count:<3} {result.rate:>7.0f} req/s"
                    f"  p99 {result.p99_ms:6.2f} ms  errors {result.errors}"
                    f"  CPU {per_hit:.0f} us/hit",
                    flush=True,
                )
    return measured


def print_ratios(measured: Rounds, new: str, old: str, connections: Sequence[int]) -> None:
    """Medians of the per-round ratios `new`/`old`: each round's pair ran back to back."""
    for count in connections:
        new_runs, old_runs = measured.results[new, count], measured.results[old, count]
        new_cpu, old_cpu = measured.cpu_per_hit_us[new, count], measured.cpu_per_hit_us[old, count]
        rate = median([n.rate / o.rate for n, o in zip(new_runs, old_runs, strict=True)])
        per_hit = median([n / o for n, o in zip(new_cpu, old_cpu, strict=True)])
        print(
            f"c={count}: {new}/{old} hits/s {rate:.3f}, CPU per hit {per_hit:.3f} "
            f"({median(new_cpu):.0f} vs {median(old_cpu):.0f} us); errors "
            f"{sum(r.errors for r in new_runs + old_runs)}"
        )


def compare_hit_servers(doc: str, new: tuple[str, str], old: tuple[str, str]) -> None:
    """A whole side-by-side run from the command line: two servers, each a (name, module run
    with `python -m`), on one Redis and one origin, and the ratios of `new` to `old`."""
    parser = argparse.ArgumentParser(description=doc)
    add_round_arguments(parser)
    args = parser.parse_args()
    require("wrk", "redis-server")

    (new_name, new_module), (old_name, old_module) = new, old
    origin_port, new_port, old_port = free_ports(3)
    with (
        RedisServer() as redis,
        origin_service(origin_port) as origin,
        shared_proxy(new_port, origin.url, redis.url, module=new_module, **HIT_SETTINGS) as first,
        shared_proxy(old_port, origin.url, redis.url, module=old_module, **HIT_SETTINGS) as second,
    ):
        services = {new_name: first, old_name: second}
        measured = measure_hits(services, args.rounds, args.seconds, args.connections)

    print(f"\nmedians over {args.rounds} rounds (wrk, loopback, 1 worker each)")
    print_ratios(measured, new_name, old_name, args.connections)
