"""Memory of the in-process tier: RSS per 10,000 entries of 2 KB, and the bound under a scan.

In this process, with the tier the proxy builds (proxy/store/near.py) and entries decoded from
the stored format as a Redis lookup decodes them: keeps `--entries` distinct run entries (100
runs x 4 credentials shapes, scaled up), measures resident memory before and after, then scans
`--scan` times as many distinct entries through a tier bounded at `--max-bytes` and reports
the tier's accounted bytes, its entry count and the RSS growth, which must stay bounded.

    python -m benchmarks.near_memory [--entries 10000] [--scan 10] [--max-bytes 33554432]
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import uuid

from prometheus_client import CollectorRegistry

from benchmarks.harness import rss_kib
from benchmarks.origin import run_body
from proxy.core.model import Entry, EntryKey
from proxy.ops.metrics import Metrics
from proxy.store import codec
from proxy.store.near import ENTRY_OVERHEAD, NearTier


def stored_entry(run_id: str, now: float) -> Entry:
    """An entry as a lookup hands it to the tier: decoded from the bytes Redis holds."""
    etag = f'"etag-{run_id[:8]}"'
    entry = Entry(200, "application/json", run_body(run_id), etag, now, 3600, 0)
    return codec.decode(codec.encode(entry))


def fill(tier: NearTier, count: int, now: float) -> None:
    for number in range(count):
        run_id = str(uuid.uuid4())
        scope = f"{number % 4:032x}"
        key = EntryKey(run_id, f"run:{scope}", scope)
        tier.keep(key, stored_entry(run_id, now), tier.ticket())


def rss() -> int:
    gc.collect()
    return rss_kib(os.getpid())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--scan", type=int, default=10)
    parser.add_argument("--max-bytes", type=int, default=33_554_432)
    args = parser.parse_args()
    now = time.time()

    unbounded = NearTier(1 << 40, 3600, Metrics(CollectorRegistry()))
    unbounded.live_until = float("inf")
    before = rss()
    fill(unbounded, args.entries, now)
    grown = rss() - before
    body = len(run_body(str(uuid.uuid4())))
    accounted = unbounded.size / args.entries
    print(f"{args.entries} entries of {body} B bodies: RSS +{grown / 1024:.1f} MiB, "
          f"{grown * 1024 / args.entries:.0f} B per entry; the tier accounts "
          f"{accounted:.0f} B per entry (ENTRY_OVERHEAD {ENTRY_OVERHEAD})")  # fmt: skip
    del unbounded
    baseline = rss()

    bounded = NearTier(args.max_bytes, 3600, Metrics(CollectorRegistry()))
    bounded.live_until = float("inf")
    scanned = args.entries * args.scan
    peak = 0
    for _ in range(args.scan):
        fill(bounded, args.entries, now)
        peak = max(peak, rss() - baseline)
    print(f"scan of {scanned} distinct entries through a {args.max_bytes / 2**20:.0f} MiB tier: "
          f"{len(bounded)} kept, {bounded.size / 2**20:.1f} MiB accounted (bound held: "
          f"{bounded.size <= args.max_bytes}), RSS growth peak {peak / 1024:.1f} MiB")  # fmt: skip
    if bounded.size > args.max_bytes:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
