"""Hit path: the proxy (1 worker) against the Python floor and nginx proxy_cache, side by side.

The proxy runs twice: with its in-process tier (the default with Redis) and without it
(`nonear`: every hit asks Redis), so the tier's gain is measured in the same run.

100 hot runs x 4 credentials, ~2 KB bodies, all warmed; wrk on loopback at 8 and 64 connections,
several rounds with the systems taken in turns, so the machine's noise falls on all of them.
Prints req/s, p50 and p99 (medians over rounds) and the ratios proxy/floor and proxy/nginx.

    python -m benchmarks.hitpath [--rounds 3] [--seconds 10] [--connections 8 64]
"""

from __future__ import annotations

import argparse
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

from benchmarks.floor import floor_key
from benchmarks.harness import (
    Service,
    WrkResult,
    children,
    cycling_requests,
    free_ports,
    in_turns,
    measured_wrk,
    median,
    nginx,
    origin_service,
    proxy_counters,
    python_service,
    require,
    shared_proxy,
    wrk,
)
from benchmarks.origin import run_body
from tests.servers import RedisServer


def hit_targets(runs: int, credentials: int) -> list[tuple[str, dict[str, str]]]:
    keys = [f"Bearer {uuid.uuid4()}" for _ in range(credentials)]
    run_ids = [str(uuid.uuid4()) for _ in range(runs)]
    return [(f"/v1/runs/{run}", {"Authorization": key}) for run in run_ids for key in keys]


def warm(url: str, targets: list[tuple[str, dict[str, str]]]) -> None:
    """Read every target twice; the second pass must be all hits."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for path, headers in targets:
            client.get(path, headers=headers).raise_for_status()
        for path, headers in targets:
            answer = client.get(path, headers=headers)
            if answer.headers.get("x-cache") != "HIT":
                raise RuntimeError(f"{url}{path} is not a hit after warming: {answer.headers}")


def server_pids(service: Service) -> list[int]:
    """The processes that serve: nginx's workers (not its cache loader), or the Python server."""
    if service.name != "nginx":
        return [service.pid]
    return [
        pid
        for pid in children(service.pid)
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"nginx: worker")
    ]


def ratios(
    proxy_name: str,
    connections: int,
    results: dict[tuple[str, int], list[WrkResult]],
    cpu: dict[tuple[str, int], list[float]],
) -> str:
    """A proxy's req/s and CPU per hit against the floor's and nginx's, per-round ratios."""
    proxy_runs = results[proxy_name, connections]
    floor_runs, nginx_runs = results["floor", connections], results["nginx", connections]
    to_floor = median([p.rate / f.rate for p, f in zip(proxy_runs, floor_runs, strict=True)])
    to_nginx = median([p.rate / n.rate for p, n in zip(proxy_runs, nginx_runs, strict=True)])
    cpu_pairs = zip(cpu[proxy_name, connections], cpu["floor", connections], strict=True)
    cpu_to_floor = median([p / f for p, f in cpu_pairs])
    return (
        f"{proxy_name}/floor {to_floor:.2f}, {proxy_name}/nginx {to_nginx:.2f} (median of "
        f"per-round ratios); CPU per hit {proxy_name}/floor {cpu_to_floor:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args()
    require("wrk", "nginx", "redis-server")

    targets = hit_targets(100, 4)
    lua = cycling_requests(targets)
    origin_port, proxy_port, floor_port, nginx_port, redis_only_port = free_ports(5)
    with RedisServer() as redis:
        client = redis.client()
        for path, headers in targets:
            body = run_body(path.rsplit("/", 1)[1])
            client.set(floor_key(path.encode(), headers["Authorization"].encode()), body)
        with (
            origin_service(origin_port) as origin,
            # every measured answer a fresh hit, however long the run
            shared_proxy(proxy_port, origin.url, redis.url, cache_ttl="3600") as proxy,
            # the same proxy with its in-process tier off: every hit asks Redis
            shared_proxy(
                redis_only_port,
                origin.url,
                redis.url,
                name="proxy-redis",
                cache_ttl="3600",
                near_cache="false",
            ) as redis_only,
            python_service(
                "floor",
                "benchmarks.floor",
                floor_port,
                "--port",
                str(floor_port),
                env={"FLOOR_REDIS_URL": redis.url},
            ) as floor,
            nginx(nginx_port, origin_port, fresh="1h") as cache,
        ):
            for service in (proxy, proxy, redis_only, cache):  # twice: a fill is read back once
                warm(service.url, targets)
            services = {"proxy": proxy, "floor": floor, "nginx": cache, "nonear": redis_only}
            systems = {name: service.url for name, service in services.items()}
            for url in systems.values():  # one short unmeasured run each: JIT-free, but warm
                wrk(url, lua, connections=8, seconds=2)
            cpu: dict[tuple[str, int], list[float]] = defaultdict(list)
            counters_before = proxy_counters(proxy.url)
            results: dict[tuple[str, int], list[WrkResult]] = defaultdict(list)
            names = list(systems)
            for round_number in range(args.rounds):
                for connections in args.connections:
                    for name in in_turns(names, round_number):
                        result, spent = measured_wrk(
                            systems[name], lua, server_pids(services[name]),
                            connections=connections, seconds=args.seconds,
                        )  # fmt: skip
                        used = sum(spent)
                        results[name, connections].append(result)
                        cpu[name, connections].append(used / max(result.requests, 1) * 1e6)
                        print(
                            f"round {round_number + 1} {name:>5} c={connections:<3} "
                            f"{result.rate:>9.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                            f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}  "
                            f"CPU {cpu[name, connections][-1]:.0f} us/request",
                            flush=True,
                        )
            counters_after = proxy_counters(proxy.url)

    print("\nmedians over", args.rounds, "rounds (wrk, loopback, 1 worker each)")
    print(
        f"{'system':>6} {'conns':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'CPU us/req':>10}"
    )
    for connections in args.connections:
        for name in names:
            runs = results[name, connections]
            rate = median([r.rate for r in runs])
            p50, p99 = median([r.p50_ms for r in runs]), median([r.p99_ms for r in runs])
            errors = sum(r.errors for r in runs)
            per_request = median(cpu[name, connections])
            print(
                f"{name:>6} {connections:>5} {rate:>9.0f} {p50:>7.2f} {p99:>7.2f} {errors:>6} "
                f"{per_request:>10.0f}"
            )
    for connections in args.connections:
        for proxy_name in ("proxy", "nonear"):
            print(f"c={connections}: " + ratios(proxy_name, connections, results, cpu))
    answers = {
        name: counters_after[name] - counters_before.get(name, 0.0) for name in counters_after
    }
    hits = answers.get("hit", 0.0)
    total = sum(value for name, value in answers.items() if not name.startswith("store error"))
    print(f"proxy answers that were hits during the measured runs: {hits:.0f} of {total:.0f}")


if __name__ == "__main__":
    main()
