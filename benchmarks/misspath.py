"""Miss path: every request a distinct run; the proxy against the same proxy on the raw aiohttp
upstream adapter (benchmarks/aiohttp_proxy.py, the baseline its httpx adapter is held to),
nginx proxy_cache and no cache.

The origin answers after 30 ms; wrk keeps 64 connections busy on loopback, in several rounds
with the systems taken in turns. The proxies use a real Redis, as in production. Prints req/s,
p50, p99 (medians over rounds), upstream fetches per request (the origin counts them) and, for
the proxies, their process's CPU time per request; then the proxy's ratios to the baseline
and to nginx.

    python -m benchmarks.misspath [--rounds 3] [--seconds 10] [--connections 64]
                                  [--systems proxy aiohttp-proxy nginx direct]
"""

from __future__ import annotations

import argparse
import contextlib
import random
from collections import defaultdict
from dataclasses import dataclass

import httpx

from benchmarks.harness import (
    Service,
    WrkResult,
    cpu_seconds,
    free_ports,
    in_turns,
    median,
    nginx,
    origin_service,
    proxy_counters,
    require,
    shared_proxy,
    wrk,
)
from tests.servers import RedisServer

SYSTEMS = ("proxy", "aiohttp-proxy", "nginx", "direct")
BASELINE = "aiohttp-proxy"  # the proxy on benchmarks/aiohttp_upstream.py


@dataclass(frozen=True)
class Run:
    """One wrk run against one system."""

    result: WrkResult
    fetches: float  # upstream fetches per request
    cpu: float | None  # the system's CPU seconds per request (proxies only)


def distinct_runs(nonce: int) -> str:
    """Lua for wrk: every request a run id nobody asked for before (nonce, thread, counter)."""
    return f"""
local counter = 0
local started = 0
function setup(thread)
  started = started + 1
  thread:set("tid", started)
end
function request()
  counter = counter + 1
  local path = string.format("/v1/runs/%08x-%04x-4000-8000-%012x", {nonce}, tid, counter)
  return wrk.format("GET", path, {{["Authorization"] = "Bearer bench-key"}})
end
"""


def origin_count(url: str) -> int:
    return int(httpx.get(url + "/__count", timeout=5).text)


def measure(url: str, origin_url: str, pid: int | None, args: argparse.Namespace) -> Run:
    before, cpu_before = origin_count(origin_url), None if pid is None else cpu_seconds(pid)
    result = wrk(
        url,
        distinct_runs(random.getrandbits(32)),
        connections=args.connections,
        seconds=args.seconds,
    )
    requests = max(result.requests, 1)
    fetches = (origin_count(origin_url) - before) / requests
    cpu = None if pid is None or cpu_before is None else (cpu_seconds(pid) - cpu_before) / requests
    return Run(result, fetches, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.030)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    args = parser.parse_args()
    names: list[str] = args.systems
    require("wrk", "redis-server", *(["nginx"] if "nginx" in names else []))

    results: dict[str, list[Run]] = defaultdict(list)
    proxies = [name for name in names if name in ("proxy", BASELINE)]
    with contextlib.ExitStack() as stack:
        services = start(stack, names, args.latency)
        origin = services["direct"]
        for name in names:  # warm connections and code paths, unmeasured
            wrk(services[name].url, distinct_runs(random.getrandbits(32)), connections=8, seconds=2)
        counters_before = {name: proxy_counters(services[name].url) for name in proxies}
        for round_number in range(args.rounds):
            for name in in_turns(names, round_number):
                pid = services[name].pid if name in proxies else None
                run = measure(services[name].url, origin.url, pid, args)
                results[name].append(run)
                print(f"round {round_number + 1} {name:>13} {line(run)}", flush=True)
        counters_after = {name: proxy_counters(services[name].url) for name in proxies}

    report(results, names, args)
    for name in proxies:
        print(
            f"{name} during the measured runs:",
            counted(counters_before[name], counters_after[name]),
        )
    print(
        "(fetches/request above 1: requests wrk had in flight when it stopped reached the origin)"
    )


def start(stack: contextlib.ExitStack, names: list[str], latency: float) -> dict[str, Service]:
    """Redis, the origin ("direct") and each of `names` on free loopback ports, stopped with
    `stack`; the proxies share the Redis (every request is a new run: no key is shared)."""
    origin_port, proxy_port, baseline_port, nginx_port = free_ports(4)
    redis = stack.enter_context(RedisServer())
    origin = stack.enter_context(origin_service(origin_port, latency=latency))
    services = {"direct": origin}
    if "proxy" in names:
        services["proxy"] = stack.enter_context(shared_proxy(proxy_port, origin.url, redis.url))
    if BASELINE in names:
        baseline = shared_proxy(
            baseline_port, origin.url, redis.url, module="benchmarks.aiohttp_proxy"
        )
        services[BASELINE] = stack.enter_context(baseline)
    if "nginx" in names:
        services["nginx"] = stack.enter_context(nginx(nginx_port, origin_port))
    return services


def counted(before: dict[str, float], after: dict[str, float]) -> str:
    """What a proxy's counters moved by: its cache results and store errors."""
    moved = {key: after[key] - before.get(key, 0.0) for key in sorted(after)}
    return ", ".join(f"{key} {value:.0f}" for key, value in moved.items() if value)


def line(run: Run) -> str:
    r = run.result
    cpu = "" if run.cpu is None else f"  CPU {run.cpu * 1e6:5.0f} us/request"
    return (
        f"{r.rate:>7.0f} req/s  p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:6.1f} ms  "
        f"fetches/request {run.fetches:.3f}  errors {r.errors}{cpu}"
    )


def report(results: dict[str, list[Run]], names: list[str], args: argparse.Namespace) -> None:
    print(f"\nmedians over {args.rounds} rounds, c={args.connections}, origin {args.latency}s")
    print(
        f"{'system':>13} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'fetch/req':>9} "
        f"{'errors':>6} {'CPU us/req':>10}"
    )
    for name in names:
        runs = results[name]
        cpus = [run.cpu for run in runs if run.cpu is not None]
        cpu_column = f"{median(cpus) * 1e6:>10.0f}" if cpus else f"{'':>10}"
        print(
            f"{name:>13} {median([r.result.rate for r in runs]):>7.0f} "
            f"{median([r.result.p50_ms for r in runs]):>7.1f} "
            f"{median([r.result.p99_ms for r in runs]):>7.1f} "
            f"{median([r.fetches for r in runs]):>9.3f} "
            f"{sum(r.result.errors for r in runs):>6} {cpu_column}"
        )
    if "proxy" in names and BASELINE in names:
        pairs = list(zip(results["proxy"], results[BASELINE], strict=True))
        rate = median([p.result.rate / b.result.rate for p, b in pairs])
        p99 = median([p.result.p99_ms / b.result.p99_ms for p, b in pairs])
        cpu = median([p.cpu / b.cpu for p, b in pairs if p.cpu and b.cpu])
        print(
            f"proxy/{BASELINE}: misses/s {rate:.2f}, p99 {p99:.2f}, CPU per miss {cpu:.2f} "
            "(medians of per-round ratios; the goal: misses/s >= 0.85)"
        )
    if "proxy" in names and "nginx" in names:
        pairs = list(zip(results["proxy"], results["nginx"], strict=True))
        rate = median([p.result.rate / n.result.rate for p, n in pairs])
        p99 = median([p.result.p99_ms / n.result.p99_ms for p, n in pairs])
        print(f"proxy/nginx: throughput {rate:.2f}, p99 {p99:.2f} (median of per-round)")


if __name__ == "__main__":
    main()
