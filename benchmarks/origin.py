"""A fast fake Lunary origin for benchmarks: raw asyncio on uvloop, in a process of its own.

tests/fake_lunary.py follows the upstream in detail but costs a Starlette request per call, which
would cap a miss-path benchmark at the fake's own speed. This one answers `GET /v1/runs/{id}` and
`/related` with a settled run of about 2 KB (the id in it), after a fixed latency, and counts
requests; `GET /__count` returns that count. Loopback only.

    python -m benchmarks.origin --port 18500 --latency 0.03
"""

from __future__ import annotations

import argparse
import asyncio
import random
import zlib
from typing import cast

import orjson
import uvloop

NOT_FOUND = b'{"message":"Not found"}'
UNAUTHORIZED = b'{"message":"Unauthorized"}'
# Model output is prose, which deflates about 2-3x; a body padded with one repeated byte would
# deflate 100x and flatter any compression. Texts are made once, then picked by run id.
VOCABULARY = (
    "the a of to and in is for that on with as it by this be are from at or an was which can "
    "model answer question token prompt user assistant context summary result value request "
    "response data list step first then next because however example function return error "
    "retry latency cost output input message system tool call search document page section "
    "table report score metric evaluation feedback trace span run parent child chain agent "
    "retrieval embedding vector index query filter limit offset order time date number count "
    "customer support ticket refund invoice account email address order shipping delivery "
    "product price discount policy contract clause term section paragraph sentence word"
)
WORDS = VOCABULARY.split()
TEXTS = [
    " ".join(random.Random(seed).choices(WORDS, k=8000)).capitalize() + "." for seed in range(32)
]


def run_body(run_id: str, size: int = 2048) -> bytes:
    """A settled run shaped like Lunary's, its output prose, about `size` bytes in all."""
    run = {
        "id": run_id,
        "projectId": "6b1f0e0c-2f55-4c43-8a2b-9d2c3c1d7a10",
        "type": "llm",
        "name": "gpt-4o",
        "status": "success",
        "createdAt": "2026-11-01T10:00:00.000Z",
        "endedAt": "2026-11-01T10:00:01.250Z",
        "duration": 1.25,
        "tags": ["bench"],
        "tokens": {"prompt": 812, "completion": 230, "total": 1042},
        "cost": 0.0081,
        "input": [{"role": "user", "content": "", "enrichments": []}],
        "output": [{"role": "assistant", "content": "", "enrichments": []}],
        "parentRunId": None,
        "metadata": {},
        "scores": [],
    }
    pad = max(size - len(orjson.dumps(run)), 0)
    text = TEXTS[zlib.crc32(run_id.encode()) % len(TEXTS)]
    while len(text) < pad:
        text += " " + text
    run["output"][0]["content"] = text[:pad]  # type: ignore[index]
    return orjson.dumps(run)


class Origin(asyncio.Protocol):
    """One keep-alive connection: requests are answered in order, each after `latency`."""

    count = 0

    def __init__(self, latency: float, body_bytes: int) -> None:
        self._latency = latency
        self._body_bytes = body_bytes
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
            status, body = self._answer(head)
            response = (
                b"HTTP/1.1 %d X\r\ncontent-type: application/json; charset=utf-8\r\n"
                b"content-length: %d\r\n\r\n%s" % (status, len(body), body)
            )
            if self._latency > 0:
                asyncio.get_running_loop().call_later(self._latency, self._write, response)
            else:
                self._write(response)

    def _write(self, response: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(response)

    def _answer(self, head: bytes) -> tuple[int, bytes]:
        lines = head.split(b"\r\n")
        _method, target, _version = lines[0].split(b" ", 2)
        path = target.split(b"?", 1)[0].decode("latin-1")
        if path == "/__count":
            return 200, b"%d" % Origin.count
        Origin.count += 1
        names = {line.split(b":", 1)[0].strip().lower() for line in lines[1:]}
        if b"authorization" not in names and b"x-api-key" not in names:
            return 401, UNAUTHORIZED
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[:2] == ["v1", "runs"]:
            body = run_body(parts[2], self._body_bytes)
            return 200, body if len(parts) == 3 else b"[" + body + b"]"
        return 404, NOT_FOUND


async def serve(port: int, latency: float, body_bytes: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Origin(latency, body_bytes), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--body-bytes", type=int, default=2048)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.latency, args.body_bytes))


if __name__ == "__main__":
    main()
