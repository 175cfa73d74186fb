"""Miss path: every request a distinct run; the proxy against nginx proxy_cache and no cache.

The origin answers after 30 ms; wrk keeps 64 connections busy on loopback, in several rounds
with the systems taken in turns. The proxy uses a real Redis, as in production. Prints req/s,
p50, p99 (medians over rounds) and upstream fetches per request (the origin counts them).

    python -m benchmarks.misspath [--rounds 3] [--seconds 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict

import httpx

from benchmarks.harness import (
    WrkResult,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.030)
    args = parser.parse_args()
    require("wrk", "nginx", "redis-server")

    origin_port, proxy_port, nginx_port = free_ports(3)
    results: dict[str, list[tuple[WrkResult, float]]] = defaultdict(list)
    names = ["proxy", "nginx", "direct"]
    with (
        RedisServer() as redis,
        origin_service(origin_port, latency=args.latency) as origin,
        shared_proxy(proxy_port, origin.url, redis.url) as proxy,
        nginx(nginx_port, origin_port) as cache,
    ):
        systems = {"proxy": proxy.url, "nginx": cache.url, "direct": origin.url}
        for url in systems.values():  # warm connections and code paths, unmeasured
            wrk(url, distinct_runs(random.getrandbits(32)), connections=8, seconds=2)
        counters_before = proxy_counters(proxy.url)
        for round_number in range(args.rounds):
            for name in in_turns(names, round_number):
                before = origin_count(origin.url)
                result = wrk(
                    systems[name],
                    distinct_runs(random.getrandbits(32)),
                    connections=args.connections,
                    seconds=args.seconds,
                )
                fetches = (origin_count(origin.url) - before) / max(result.requests, 1)
                results[name].append((result, fetches))
                print(
                    f"round {round_number + 1} {name:>6} {result.rate:>7.0f} req/s  "
                    f"p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms  "
                    f"fetches/request {fetches:.3f}  errors {result.errors}",
                    flush=True,
                )
        counters_after = proxy_counters(proxy.url)

    print(f"\nmedians over {args.rounds} rounds, c={args.connections}, origin {args.latency}s")
    print(f"{'system':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'fetch/req':>9} {'errors':>6}")
    for name in names:
        runs = results[name]
        rate = median([r.rate for r, _ in runs])
        p50, p99 = median([r.p50_ms for r, _ in runs]), median([r.p99_ms for r, _ in runs])
        fetches = median([f for _, f in runs])
        errors = sum(r.errors for r, _ in runs)
        print(f"{name:>6} {rate:>7.0f} {p50:>7.1f} {p99:>7.1f} {fetches:>9.3f} {errors:>6}")
    pairs = list(zip(results["proxy"], results["nginx"], strict=True))
    rate_ratio = median([p.rate / n.rate for (p, _), (n, _) in pairs])
    p99_ratio = median([p.p99_ms / n.p99_ms for (p, _), (n, _) in pairs])
    print(f"proxy/nginx: throughput {rate_ratio:.2f}, p99 {p99_ratio:.2f} (median of per-round)")
    seen = {
        name: counters_after[name] - counters_before.get(name, 0.0)
        for name in sorted(counters_after)
        if counters_after[name] != counters_before.get(name, 0.0)
    }
    print("proxy during the measured runs:", ", ".join(f"{n} {v:.0f}" for n, v in seen.items()))
    print(
        "(fetches/request above 1: requests wrk had in flight when it stopped reached the origin)"
    )


if __name__ == "__main__":
    main()
