"""Cross-replica invalidation delay: a write through replica A, then reads of the run through
replica B until B answers the written version. Issue 16's benchmark for an in-process tier;
it runs with B's in-process tier off (every hit asks Redis, and A bumps the run's generation
before it answers the write: the floor) and on (B learns of the write from A's announcement).

Two proxy processes share one Redis in front of benchmarks/origin.py in marker mode, whose run
bodies carry the run's write `version`. Each write first reads the run through B (so B has it
cached), PATCHes its tags through A, then reads through B at once and every millisecond until
the body shows the new version. Prints the delay from A's answer to B's first fresh answer
(median, p99, max), the stale answers B gave inside the window, and those after it, which must
be 0. Loopback only; bounded in writes and time; everything it starts is stopped by PID.

    python -m benchmarks.invalidation_delay [--writes 1000] [--runs 50] [--window-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import uvloop

from benchmarks.harness import (
    free_ports,
    median,
    metric_samples,
    origin_service,
    require,
    shared_proxy,
)
from tests.servers import RedisServer

KEY = "invalidation-delay-key"
GIVE_UP_AFTER = 2.0  # seconds a write may take to show through B before it counts as lost
POLL_EVERY = 0.001


@dataclass
class Delays:
    seconds: list[float] = field(default_factory=list)
    stale_inside: int = 0
    stale_after: int = 0
    lost: int = 0  # writes B never showed within GIVE_UP_AFTER


def world_file(directory: str, runs: list[str]) -> str:
    path = Path(directory) / "world.json"
    path.write_bytes(orjson.dumps({"keys": {KEY: "org"}, "runs": dict.fromkeys(runs, "org")}))
    return str(path)


async def version_through(client: httpx.AsyncClient, url: str) -> int:
    answer = await client.get(url)
    answer.raise_for_status()
    version: int = answer.json()["version"]
    return version


async def one_write(
    client: httpx.AsyncClient, writer: str, reader: str, run: str, window: float, out: Delays
) -> None:
    read_url = f"{reader}/v1/runs/{run}"
    # B holds the run now: the first read may be B's own fill, which its in-process tier does
    # not keep; the second is then answered from Redis and kept
    await version_through(client, read_url)
    await version_through(client, read_url)
    written = await client.patch(f"{writer}/v1/runs/{run}/tags", json={"tags": ["t"]})
    written.raise_for_status()
    acknowledged = time.perf_counter()
    version = int(written.headers["x-origin-version"])
    while (seen := await version_through(client, read_url)) < version:
        waited = time.perf_counter() - acknowledged
        if waited > window:
            out.stale_after += 1
        else:
            out.stale_inside += 1
        if waited > GIVE_UP_AFTER:
            out.lost += 1
            return
        await asyncio.sleep(POLL_EVERY)
    assert seen >= version
    out.seconds.append(time.perf_counter() - acknowledged)


async def drive(writer: str, reader: str, runs: list[str], writes: int, window: float) -> Delays:
    out = Delays()
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(headers=headers, timeout=10) as client:
        for number in range(writes):
            await one_write(client, writer, reader, runs[number % len(runs)], window, out)
    return out


def report(delays: Delays, window: float) -> None:
    ms = sorted(s * 1000 for s in delays.seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else float("nan")
    print(f"writes shown through B: {len(ms)} (lost: {delays.lost})")
    print(f"delay, A's answer to B's first fresh answer: median {median(ms):.2f} ms, "
          f"p99 {p99:.2f} ms, max {max(ms, default=float('nan')):.2f} ms")  # fmt: skip
    print(f"stale answers from B: {delays.stale_inside} inside the {window * 1000:.0f} ms "
          f"window, {delays.stale_after} after it (must be 0)")  # fmt: skip


def measure(runs: list[str], writes: int, window: float, near: str) -> tuple[Delays, float]:
    """The delays with B's in-process tier on or off, and how many reads that tier answered."""
    origin_port, writer_port, reader_port = free_ports(3)
    with (
        tempfile.TemporaryDirectory(prefix="lcp-delay-") as directory,
        RedisServer() as redis,
        origin_service(origin_port, world=world_file(directory, runs)) as origin,
        shared_proxy(
            writer_port, origin.url, redis.url, name="A", cache_ttl="3600", near_cache=near
        ) as writer,
        shared_proxy(
            reader_port, origin.url, redis.url, name="B", cache_ttl="3600", near_cache=near
        ) as reader,
    ):
        delays = uvloop.run(drive(writer.url, reader.url, runs, writes, window))
        tier_hits = sum(
            value
            for (name, labels), value in metric_samples(reader.url).items()
            if name == "lunary_proxy_near_lookups_total" and dict(labels)["result"] == "hit"
        )
    return delays, tier_hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--window-ms", type=float, default=50)
    parser.add_argument("--near", nargs="+", choices=("false", "true"), default=["false", "true"])
    args = parser.parse_args()
    require("redis-server")
    runs = [str(uuid.uuid4()) for _ in range(args.runs)]
    window = args.window_ms / 1000
    failed = False
    for near in args.near:
        delays, tier_hits = measure(runs, args.writes, window, near)
        print(f"-- PROXY_NEAR_CACHE={near}: reads B answered from its in-process tier: "
              f"{tier_hits:.0f}")  # fmt: skip
        report(delays, window)
        failed = failed or bool(delays.stale_after or delays.lost)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
