"""The proxy with its upstream adapter swapped for the raw aiohttp baseline
(benchmarks/aiohttp_upstream.py), served as `python -m proxy` serves it: what
benchmarks/misspath.py measures the proxy's own adapter (httpx on the aiohttp transport)
against, in the same run. One worker only (more would build their apps without the swap).
Settings come from PROXY_* as for `python -m proxy`.

    PROXY_PORT=18600 python -m benchmarks.aiohttp_proxy
"""

from __future__ import annotations

import sys

from benchmarks.aiohttp_upstream import AiohttpUpstream
from config import load_settings
from proxy.__main__ import main as serve
from proxy.web import components


def main() -> None:
    if load_settings().workers != 1:
        sys.exit("benchmarks.aiohttp_proxy serves one worker: set PROXY_WORKERS=1")
    # the components build both upstream pools by this name when the lifespan starts
    components.LunaryUpstream = AiohttpUpstream  # type: ignore[attr-defined, assignment]
    serve()


if __name__ == "__main__":
    main()
