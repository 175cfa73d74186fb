"""Redis memory per stored entry against the body it holds, for realistic run bodies.

For each body size, reads 200 distinct runs through the proxy (so the real fill path stores them),
then asks Redis `MEMORY USAGE` of every entry key. Prints bytes per entry, the body size, and
their ratio (the goal is at most 1.10). Loopback only.

    python -m benchmarks.memory [--sizes 1024 2048 8192 32768] [--entries 200]
"""

from __future__ import annotations

import argparse
import uuid

import httpx

from benchmarks.harness import free_ports, median, origin_service, require, shared_proxy
from benchmarks.origin import run_body
from tests.servers import RedisServer


def measure(size: int, entries: int) -> tuple[float, float, int]:
    """(median MEMORY USAGE per entry, mean stored value length, entries found) for one size."""
    origin_port, proxy_port = free_ports(2)
    redis = RedisServer()
    redis.start()
    try:
        with (
            origin_service(origin_port, body_bytes=size) as origin,
            shared_proxy(proxy_port, origin.url, redis.url) as proxy,
            httpx.Client(base_url=proxy.url, timeout=10) as client,
        ):
            for _ in range(entries):
                answer = client.get(f"/v1/runs/{uuid.uuid4()}", headers={"X-API-Key": "k"})
                answer.raise_for_status()
        store = redis.client()
        keys = [key for key in store.scan_iter(match="lcp:1:{*}:*") if b":lock:" not in key]
        usage = [float(store.memory_usage(key, samples=0) or 0) for key in keys]
        lengths = [float(store.strlen(key)) for key in keys]
        return median(usage), sum(lengths) / max(len(lengths), 1), len(keys)
    finally:
        redis.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 8192, 32768])
    parser.add_argument("--entries", type=int, default=200)
    args = parser.parse_args()
    require("redis-server")
    print(f"{'body':>7} {'value':>7} {'MEMORY USAGE':>12} {'ratio':>6} {'entries':>7}")
    for size in args.sizes:
        body = len(run_body(str(uuid.uuid4()), size))
        usage, value, found = measure(size, args.entries)
        print(f"{body:>7} {value:>7.0f} {usage:>12.0f} {usage / body:>6.2f} {found:>7}")
    print("body: bytes the client receives; value: bytes of the stored value; ratio: usage/body")


if __name__ == "__main__":
    main()
