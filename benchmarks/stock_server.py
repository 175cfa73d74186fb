"""The proxy app served by uvicorn's stock httptools protocol: no client timeouts, no head
bound. Only the baseline that benchmarks/protocol.py measures proxy/web/server.py against; never
run it in front of clients. Settings come from PROXY_* as for `python -m proxy`.

    PROXY_PORT=18600 python -m benchmarks.stock_server
"""

from __future__ import annotations

import uvicorn

from config import load_settings
from proxy.__main__ import SERVER_OPTIONS
from proxy.ops import logs
from proxy.web.app import create_app


def main() -> None:
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        http="httptools",
        **SERVER_OPTIONS,
    )


if __name__ == "__main__":
    main()
