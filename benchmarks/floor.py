"""The Python floor of a cache hit: a raw ASGI app doing one redis-py GET and returning the value.

Served by uvicorn with the proxy's own server settings (uvloop, httptools, no access log), it is
the least any Python proxy on this stack can do per hit; benchmarks/hitpath.py compares the
proxy against it. The key is the path and credential header, as a cache would need.

    FLOOR_REDIS_URL=redis://127.0.0.1:6379/0 python -m benchmarks.floor --port 18501
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import uvicorn
from redis.asyncio import BlockingConnectionPool, Redis

from proxy.__main__ import SERVER_OPTIONS

Scope = dict[str, Any]
NOT_FOUND = {"type": "http.response.start", "status": 404, "headers": []}
HEADERS = [(b"content-type", b"application/json; charset=utf-8")]


def floor_key(path: bytes, credential: bytes) -> bytes:
    return b"floor:" + path + b"|" + credential


class Floor:
    def __init__(self, url: str) -> None:
        pool = BlockingConnectionPool.from_url(url, max_connections=64)
        self._redis = Redis(connection_pool=pool)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        credential = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                credential = value
        value = await self._redis.get(floor_key(scope["raw_path"], credential))
        if value is None:
            await send(NOT_FOUND)
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": value})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        Floor(os.environ["FLOOR_REDIS_URL"]),
        host="127.0.0.1",
        port=args.port,
        lifespan="off",
        **SERVER_OPTIONS,
    )


if __name__ == "__main__":
    main()
