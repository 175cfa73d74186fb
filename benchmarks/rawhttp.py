"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for load scripts on loopback.

httpx costs milliseconds of CPU per request, which on a 2-core machine would measure the load
generator rather than the proxy. This client does one request per connection at a time and
parses just enough of the answer (status, headers, a Content-Length or chunked body).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpConnection:
    """One keep-alive HTTP/1.1 connection for load scripts: any method, a body, HEAD, chunked
    answers. A few tens of microseconds of CPU per request, where httpx costs milliseconds.

    After any error the connection is dropped; the next request opens a new one. A connection
    idle for `max_idle` seconds is replaced before use, so the server's keep-alive timeout
    (uvicorn's is 5 s) never closes one under a request, which would read as a proxy error.
    """

    def __init__(self, url: str, max_idle: float = 4.0) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._max_idle = max_idle
        self._used = 0.0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        try:
            return await self._request(method, path, headers or {}, body)
        except BaseException:
            self.close()
            raise

    async def _request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> Answer:
        now = time.monotonic()
        if self._writer is not None and now - self._used > self._max_idle:
            self.close()
        self._used = now
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}:{self._port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        parsed: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        content = b""
        if method == "HEAD" or status in (204, 304) or status < 200:
            pass
        elif "content-length" in parsed:
            content = await reader.readexactly(int(parsed["content-length"]))
        elif "chunked" in parsed.get("transfer-encoding", "").lower():
            content = await _chunked(reader)
        else:
            content = await reader.read()
            parsed["connection"] = "close"
        if parsed.get("connection", "").lower() == "close":
            self.close()
        self._used = time.monotonic()
        return Answer(status, parsed, content)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
