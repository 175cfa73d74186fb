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
from collections.abc import Iterator
from pathlib import Path

from benchmarks.harness import Service, free_ports, origin_service, require, shared_proxy
from benchmarks.side_by_side import (
    HIT_SETTINGS,
    add_round_arguments,
    measure_hits,
    print_ratios,
)
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
    command = [sys.executable, "-c", RUN_FROM_TREE, str(tree)]
    return shared_proxy(port, origin_url, redis_url, command=command, name=name, **HIT_SETTINGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    add_round_arguments(parser)
    args = parser.parse_args()
    require("wrk", "redis-server")

    origin_port, base_port, head_port = free_ports(3)
    with (
        worktree(args.base) as base_tree,
        RedisServer() as redis,
        origin_service(origin_port) as origin,
        proxy_from(base_tree, "base", base_port, origin.url, redis.url) as base,
        proxy_from(ROOT, "head", head_port, origin.url, redis.url) as head,
    ):
        measured = measure_hits({"base": base, "head": head}, args.rounds, args.seconds,
                                args.connections)  # fmt: skip

    print(f"\nmedians over {args.rounds} rounds (wrk, loopback, 1 worker each; base {args.base})")
    print_ratios(measured, "head", "base", args.connections)


if __name__ == "__main__":
    main()
