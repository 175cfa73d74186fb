"""What the proxy's own HTTP protocol (proxy/web/server.py: client timeouts, head bound, safe
refusals) costs on the hit path: the same app served by it and by uvicorn's stock httptools
protocol, side by side on one Redis, the two taken in turns each round.

    python -m benchmarks.protocol [--rounds 3] [--seconds 10] [--connections 8 64]
"""

from __future__ import annotations

from benchmarks.side_by_side import compare_hit_servers


def main() -> None:
    compare_hit_servers(
        __doc__ or "", new=("guarded", "proxy"), old=("stock", "benchmarks.stock_server")
    )


if __name__ == "__main__":
    main()
