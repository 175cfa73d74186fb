"""A fast fake Lunary origin for benchmarks: raw asyncio on uvloop, in a process of its own.

tests/fake_lunary.py follows the upstream in detail but costs a Starlette request per call, which
would cap a miss-path benchmark at the fake's own speed. This one answers `GET /v1/runs/{id}` and
`/related` with a settled run of about 2 KB (the id in it), after a fixed latency, and counts
requests; `GET /__count` returns that count. Loopback only.

With `--world FILE` (marker mode, for benchmarks/isolation.py and soak.py) it plays the part of
Lunary's access rules instead, so a load script can check every answer it gets through the proxy:
the file names the credentials (key -> org, or null for a public key) and the runs (run -> org).
An unknown key gets 401, a run outside the key's org 404 (`/related`: `[]`), and a visible run's
body carries `"reader"`, a digest of the credential that read it (`marker()`), and `"version"`,
raised by every write to the run (a 2xx to PATCH/PUT/POST/DELETE, whose answer carries the new
version in `x-origin-version`). Control paths, never proxied: `GET /__fail?seconds=S` answers
503 to every `/v1/` request for S seconds; `GET /__fills` lists the run reads served so far
(`[[time, run, route, reader, status], ...]`, one JSON array).

`--read-latency` adds a delay to run reads only (GET /v1/runs/...), so writes can overtake
reads in flight: the body is made when the request arrives, as a database read would be.

    python -m benchmarks.origin --port 18500 --latency 0.03 [--world world.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import orjson
import uvloop

# a run read as marker mode's `/__fills` lists it: time, run, route, reader, status
Fill = tuple[float, str, str, str, int]

NOT_FOUND = b'{"message":"Not found"}'
UNAUTHORIZED = b'{"message":"Unauthorized"}'
# marker mode answers as UPSTREAM.md says Lunary does
RUN_NOT_FOUND = b'{"message":"Run not found"}'
NO_CREDENTIAL = b'{"message":"Not Found"}'
INVALID_KEY = b'{"message":"Invalid API key"}'
PUBLIC_KEY = b'{"message":"This route requires a private API key"}'
UNAVAILABLE = b'{"message":"Service Unavailable"}'
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


def marker(credential: str) -> str:
    """What a body read with `credential` carries as its `reader`: a digest, never the key."""
    return hashlib.sha256(b"lcp-reader:" + credential.encode()).hexdigest()[:16]


def marked_body(run_id: str, reader: str, version: int, size: int = 2048) -> bytes:
    """A run's body as marker mode serves it to `reader` (a `marker()`) at `version`.

    The one definition of the format: the origin serves it and isolation.py's checker
    computes the ETags a HEAD answer may carry from it.
    """
    return _unmarked(run_id, size) + b',"reader":"%s","version":%d}' % (reader.encode(), version)


@functools.cache
def _unmarked(run_id: str, size: int) -> bytes:
    """`run_body` without its closing brace, made once per run: only the marker varies."""
    return run_body(run_id, size)[:-1]


@dataclass
class World:
    """Marker mode's access rules and state, shared by every connection of the process."""

    keys: dict[str, str | None]  # credential -> org; None: a public key (401 on run reads)
    runs: dict[str, str]  # run -> org; any other run id is absent (404)
    body_bytes: int = 2048
    versions: dict[str, int] = field(default_factory=dict)
    failing_until: float = 0.0
    fills: list[Fill] = field(default_factory=list)

    @classmethod
    def load(cls, path: str, body_bytes: int) -> World:
        document = orjson.loads(Path(path).read_bytes())
        return cls(keys=document["keys"], runs=document["runs"], body_bytes=body_bytes)

    def answer(
        self, method: bytes, path: str, query: str, lines: list[bytes]
    ) -> tuple[int, bytes, bytes]:
        """(status, body, extra header lines) for a request under the access rules."""
        now = time.time()
        if path == "/__fail":
            self.failing_until = now + float(query.partition("seconds=")[2].split("&")[0] or 0)
            return 200, b"{}", b""
        if path == "/__fills":
            return 200, orjson.dumps(self.fills), b""
        parts = path.strip("/").split("/")
        failing = now < self.failing_until and path.startswith("/v1/")
        if len(parts) < 3 or parts[:2] != ["v1", "runs"]:
            return (503, UNAVAILABLE, b"") if failing else (404, NO_CREDENTIAL, b"")
        token = _credential(lines)
        run_id, rest = parts[2].lower(), parts[3:]
        reading = method in (b"GET", b"HEAD")
        route = "related" if rest == ["related"] else "run" if not rest else ""
        if failing:
            status, body, extra = 503, UNAVAILABLE, b""
        else:
            status, body, extra = self._runs(method, token, run_id, route, reading)
        if reading and route:
            self.fills.append((now, run_id, route, marker(token) if token else "", status))
        return status, body, extra

    def _runs(
        self, method: bytes, token: str | None, run_id: str, route: str, reading: bool
    ) -> tuple[int, bytes, bytes]:
        if token is None:
            return 404, NO_CREDENTIAL, b""
        if token not in self.keys:
            return 401, INVALID_KEY, b""
        org = self.keys[token]
        if org is None:
            return 401, PUBLIC_KEY, b""
        visible = self.runs.get(run_id) == org
        if not reading:
            if not visible:  # as Lunary: a DELETE says 404, other writes {} and change nothing
                return (404, RUN_NOT_FOUND, b"") if method == b"DELETE" else (200, b"{}", b"")
            version = self.versions[run_id] = self.versions.get(run_id, 0) + 1
            return 200, b"{}", b"x-origin-version: %d\r\n" % version
        if route == "run":
            return (200, self._body(run_id, token), b"") if visible else (404, RUN_NOT_FOUND, b"")
        if route == "related":
            return 200, b"[" + self._body(run_id, token) + b"]" if visible else b"[]", b""
        return 404, NO_CREDENTIAL, b""

    def _body(self, run_id: str, token: str) -> bytes:
        return marked_body(run_id, marker(token), self.versions.get(run_id, 0), self.body_bytes)


def _credential(lines: list[bytes]) -> str | None:
    """The key Lunary would read: `Authorization: <scheme> <key>` first, else `X-API-Key`."""
    api_key: str | None = None
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"authorization" and value.strip():
            return value.strip().split(b" ", 1)[-1].decode("latin-1")
        if name == b"x-api-key" and value.strip():
            api_key = value.strip().decode("latin-1")
    return api_key


def _framed_body(head: bytes, buffer: bytes) -> tuple[int, int] | None:
    """(end of the body in `buffer`, whose first byte is the body's) or None if incomplete.

    Content-Length and chunked bodies both (the proxy streams writes upstream); heads without
    either have no body.
    """
    lowered = head.lower()
    if b"content-length:" not in lowered and b"transfer-encoding:" not in lowered:
        return 0, 0
    for line in lowered.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            length = int(value.strip())
            return (length, length) if len(buffer) >= length else None
        if name.strip() == b"transfer-encoding" and b"chunked" in value:
            position = 0
            while True:
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    return None
                size = int(buffer[position:end].split(b";", 1)[0], 16)
                if size == 0:
                    trailer = buffer.find(b"\r\n\r\n", end)
                    return None if trailer < 0 else (trailer + 4, trailer + 4)
                position = end + 2 + size + 2
                if position > len(buffer):
                    return None
    return 0, 0


class Origin(asyncio.Protocol):
    """One keep-alive connection: requests are answered in order, each after `latency`."""

    count = 0
    world: World | None = None  # marker mode, when set

    def __init__(self, latency: float, body_bytes: int, read_latency: float = 0.0) -> None:
        self._latency = latency
        self._read_latency = read_latency
        self._body_bytes = body_bytes
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, rest = self._buffer.split(b"\r\n\r\n", 1)
            framed = _framed_body(head, rest)
            if framed is None:
                return  # the body is still on its way
            self._buffer = rest[framed[1] :]
            extra = b""
            if Origin.world is None:
                status, body = self._answer(head)
            else:
                status, body, extra = self._world_answer(Origin.world, head)
            response = (
                b"HTTP/1.1 %d X\r\ncontent-type: application/json; charset=utf-8\r\n"
                b"%scontent-length: %d\r\n\r\n%s" % (status, extra, len(body), body)
            )
            delay = self._latency
            if self._read_latency and head.startswith(b"GET /v1/runs/"):
                delay += self._read_latency
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, self._write, response)
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

    def _world_answer(self, world: World, head: bytes) -> tuple[int, bytes, bytes]:
        lines = head.split(b"\r\n")
        method, target, _version = lines[0].split(b" ", 2)
        path, _, query = target.decode("latin-1").partition("?")
        if path == "/__count":
            return 200, b"%d" % Origin.count, b""
        if not path.startswith("/__"):
            Origin.count += 1
        return world.answer(method, path, query, lines[1:])


async def serve(
    port: int,
    latency: float,
    body_bytes: int,
    world: str | None = None,
    read_latency: float = 0.0,
) -> None:
    if world is not None:
        Origin.world = World.load(world, body_bytes)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Origin(latency, body_bytes, read_latency), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--read-latency", type=float, default=0.0, help="extra, run reads only")
    parser.add_argument("--body-bytes", type=int, default=2048)
    parser.add_argument("--world", help="marker mode: a JSON file of keys and runs (see above)")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.latency, args.body_bytes, args.world, args.read_latency))


if __name__ == "__main__":
    main()
