"""The hit path of the working tree against an earlier revision, side by side: each served by
`python -m proxy` from its own tree (the earlier one checked out in a temporary git worktree),
both on one Redis in front of one origin, taken in turns each round.

    python -m benchmarks.revisions --base 35fd68e [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from benchmarks.harness import (
    SCOPE_SECRET,
    Service,
    WrkResult,
    cycling_requests,
    free_ports,
    in_turns,
    measured_wrk,
    median,
    origin_service,
    require,
    service,
    wrk,
)
from benchmarks.hitpath import hit_targets, warm
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
# `python -c` puts the working directory first on sys.path: the tree goes before it
RUN_FROM_TREE = "import runpy, sys; sys.path.insert(0, sys.argv[1]); " + (
    "runpy.run_module('proxy', run_name='__main__', alter_sys=True)"
)


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """`revision` checked out in a temporary directory, removed on the way out."""
    with tempfile.TemporaryDirectory(prefix="lcp-base-") as parent:
        path = Path(parent) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", str(path), revision], check=True)
        try:
            yield path
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=True)


def proxy_from(
    tree: Path, name: str, port: int, origin_url: str, redis_url: str
) -> contextlib.AbstractContextManager[Service]:
    env = {
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(port),
        "PROXY_UPSTREAM_URL": origin_url,
        "PROXY_REDIS_URL": redis_url,
        "PROXY_SCOPE_SECRET": SCOPE_SECRET,
        "PROXY_CACHE_TTL": "3600",  # every measured answer a fresh hit
    }
    return service(name, [sys.executable, "-c", RUN_FROM_TREE, str(tree)], port, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args()
    require("wrk", "redis-server")

    targets = hit_targets(100, 4)
    lua = cycling_requests(targets)
    origin_port, base_port, head_port = free_ports(3)
    results: dict[tuple[str, int], list[WrkResult]] = defaultdict(list)
    cpu: dict[tuple[str, int], list[float]] = defaultdict(list)
    with (
        worktree(args.base) as base_tree,
        RedisServer() as redis,
        origin_service(origin_port) as origin,
        proxy_from(base_tree, "base", base_port, origin.url, redis.url) as base,
        proxy_from(ROOT, "head", head_port, origin.url, redis.url) as head,
    ):
        services = {"base": base, "head": head}
        for system in services.values():
            warm(system.url, targets)
            wrk(system.url, lua, connections=8, seconds=2)  # warm, unmeasured
        for round_number in range(args.rounds):
            for connections in args.connections:
                for name in in_turns(list(services), round_number):
                    result, used = measured_wrk(
                        services[name].url, lua, [services[name].pid],
                        connections=connections, seconds=args.seconds,
                    )  # fmt: skip
                    results[name, connections].append(result)
                    cpu[name, connections].append(sum(used) / max(result.requests, 1) * 1e6)
                    print(
                        f"round {round_number + 1} {name:>4} c={connections:<3} "
                        f"{result.rate:>7.0f} req/s  p99 {result.p99_ms:6.2f} ms  "
                        f"errors {result.errors}  CPU {cpu[name, connections][-1]:.0f} us/hit",
                        flush=True,
                    )

    print(
        f"\nmedians over {args.rounds} rounds (wrk, loopback, 1 worker each), head vs {args.base}"
    )
    for connections in args.connections:
        head_runs, base_runs = results["head", connections], results["base", connections]
        rate = median([h.rate / b.rate for h, b in zip(head_runs, base_runs, strict=True)])
        per_hit = median(
            [h / b for h, b in zip(cpu["head", connections], cpu["base", connections], strict=True)]
        )
        print(
            f"c={connections}: head/base hits/s {rate:.3f}, CPU per hit {per_hit:.3f} "
            f"({median(cpu['head', connections]):.0f} vs {median(cpu['base', connections]):.0f} "
            f"us); errors {sum(r.errors for r in head_runs + base_runs)}"
        )


if __name__ == "__main__":
    main()
