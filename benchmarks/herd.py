"""Thundering herd: K proxy processes sharing Redis, M concurrent cold reads per (key, scope).

Prints upstream requests per (key, scope) - the goal is exactly 1.00 - and the client-side
latency of the coalesced requests against the upstream's own latency. Loopback only; bounded.

    python -m benchmarks.herd [--proxies 3] [--keys 40] [--scopes 4] [--per-key 16]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time
from collections import Counter

from benchmarks.rawhttp import HttpConnection
from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, RedisServer, ServerThread, replica_settings


async def wave(
    pools: list[list[HttpConnection]],
    runs: list[str],
    keys: list[str],
    per_key: int,
) -> list[tuple[float, int, str]]:
    """Every (run, key) read `per_key` times at once, spread over the proxies."""

    async def one(conn: HttpConnection, run: str, key: str) -> tuple[float, int, str]:
        started = time.perf_counter()
        answer = await conn.request("GET", f"/v1/runs/{run}", {"X-API-Key": key})
        return time.perf_counter() - started, answer.status, answer.headers.get("x-cache", "")

    jobs, used = [], [0] * len(pools)
    for run in runs:
        for key in keys:
            for i in range(per_key):
                which = i % len(pools)
                jobs.append(one(pools[which][used[which]], run, key))
                used[which] += 1
    return await asyncio.gather(*jobs)


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


async def main(args: argparse.Namespace) -> None:
    fake = FakeLunary(latency=args.latency)
    keys = [fake.add_key() for _ in range(args.scopes)]
    runs = [fake.add_run() for _ in range(args.keys)]
    redis = RedisServer()
    redis.start()
    try:
        with ServerThread(fake) as upstream:
            settings = replica_settings(upstream.url, redis.url)
            procs = [ProxyProcess(**settings) for _ in range(args.proxies)]
            for proc in procs:
                proc.__enter__()
            try:
                per_wave = args.wave_keys * args.scopes * args.per_key
                # never replaced for idling: the connections opened below are the ones timed
                pools = [
                    [HttpConnection(p.url, max_idle=math.inf) for _ in range(per_wave)]
                    for p in procs
                ]
                # open every connection before timing: the herd is about fills, not handshakes
                await asyncio.gather(
                    *(c.request("GET", "/healthz") for pool in pools for c in pool)
                )
                results: list[tuple[float, int, str]] = []
                started = time.perf_counter()
                for first in range(0, len(runs), args.wave_keys):
                    batch = runs[first : first + args.wave_keys]
                    results += await wave(pools, batch, keys, args.per_key)
                elapsed = time.perf_counter() - started
                for pool in pools:
                    for c in pool:
                        c.close()
            finally:
                for proc in procs:
                    proc.__exit__(None, None, None)
    finally:
        redis.close()

    fetched = Counter(
        (seen.raw_path, next((v for n, v in seen.headers if n == b"x-api-key"), b""))
        for seen in fake.requests
    )
    pairs = args.keys * args.scopes
    latencies = [latency for latency, _, _ in results]
    statuses = Counter(status for _, status, _ in results)
    print(f"proxies={args.proxies} keys={args.keys} scopes={args.scopes} per_key={args.per_key} "
          f"upstream_latency={args.latency * 1000:.0f}ms requests={len(results)} "
          f"elapsed={elapsed:.1f}s")  # fmt: skip
    print(f"statuses: {dict(statuses)}  x-cache: {dict(Counter(c for *_, c in results))}")
    print(f"upstream requests per (key, scope): {len(fake.requests) / pairs:.2f} "
          f"(max {max(fetched.values())}, pairs fetched {len(fetched)}/{pairs})")  # fmt: skip
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"client latency p50 {p50 * 1000:.0f} ms ({p50 / args.latency:.2f}x upstream), "
          f"p99 {p99 * 1000:.0f} ms ({p99 / args.latency:.2f}x upstream)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", type=int, default=3)
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--scopes", type=int, default=4)
    parser.add_argument("--per-key", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--wave-keys", type=int, default=10, help="keys read concurrently at once")
    asyncio.run(main(parser.parse_args()))
