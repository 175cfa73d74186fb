"""What the Starlette routes table (proxy/web/app.py) costs on the hit path: the proxy against
the same endpoints dispatched by an if-chain (benchmarks/flat_dispatch.py, the dispatch before
issue 15), side by side on one Redis, the two taken in turns each round. The budget: CPU per hit
rises by at most 5 %.

    python -m benchmarks.dispatch [--rounds 3] [--seconds 10] [--connections 8 64]
"""

from __future__ import annotations

from benchmarks.side_by_side import compare_hit_servers


def main() -> None:
    compare_hit_servers(
        __doc__ or "", new=("starlette", "proxy"), old=("flat", "benchmarks.flat_dispatch")
    )


if __name__ == "__main__":
    main()
