"""Where a hit's (or, with --misses, a miss's) CPU goes: py-spy samples the proxy under wrk.

Hits replay the warm hit set; misses ask for a new run every time from an origin with 30 ms
latency. Prints the frames with the most samples, by own time and by inclusive time, and leaves
a flame graph (SVG) for a closer look. Needs py-spy (pip install py-spy). Loopback only.

    python -m benchmarks.profile_hits [--misses] [--seconds 8] [--connections 64] [--svg F]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.harness import cycling_requests, free_ports, origin_service, shared_proxy, wrk
from benchmarks.hitpath import hit_targets, warm
from benchmarks.misspath import distinct_runs
from tests.servers import RedisServer


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        sys.exit("py-spy is missing: pip install py-spy")
    return found


def summarize(raw: Path, top: int) -> None:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, count_text = line.rsplit(" ", 1)
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith("Runner.run") or "select" in frames[-1]:
            continue  # the loop waiting for work, not work
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"busy samples: {total}")
    print("\nby own time:")
    for frame, count in own.most_common(top):
        print(f"{count / total:6.1%}  {frame[:120]}")
    print("\nby inclusive time (frames in proxy/ only):")
    ours = [(f, c) for f, c in inclusive.most_common() if "(proxy/" in f]
    for frame, count in ours[:top]:
        print(f"{count / total:6.1%}  {frame[:120]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--svg", default="")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--misses", action="store_true")
    args = parser.parse_args()
    spy = py_spy()
    targets = hit_targets(100, 4)
    origin_port, proxy_port = free_ports(2)
    redis = RedisServer()
    redis.start()
    raw = Path(tempfile.mkdtemp(prefix="lcp-profile-")) / "stacks.txt"
    try:
        with (
            origin_service(origin_port, latency=0.03 if args.misses else 0.0) as origin,
            shared_proxy(proxy_port, origin.url, redis.url, cache_ttl="3600") as proxy,
        ):
            if not args.misses:
                warm(proxy.url, targets)
            lua = (
                distinct_runs(random.getrandbits(32)) if args.misses else cycling_requests(targets)
            )
            record = [spy, "record", "-r", "250", "-d", str(args.seconds), "-p", str(proxy.pid)]
            spies = [subprocess.Popen([*record, "-f", "raw", "-o", str(raw)])]
            if args.svg:
                spies.append(subprocess.Popen([*record, "-o", args.svg]))
            result = wrk(
                proxy.url,
                lua,
                connections=args.connections,
                seconds=args.seconds + 1,
            )
            for running in spies:
                running.wait(timeout=60)
            print(f"{result.rate:.0f} req/s, p99 {result.p99_ms:.2f} ms (sampled, so slower)")
    finally:
        redis.close()
    summarize(raw, args.top)
    shutil.rmtree(raw.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
