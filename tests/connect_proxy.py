"""A forward proxy on loopback for the egress tests, in its own thread: CONNECT tunnels (for
https) and absolute-form requests (for plain http), recording what each client asked of it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

# hop-by-hop fields a forward proxy consumes; the request goes on with `Connection: close`
HOP_FIELDS = frozenset({b"proxy-authorization", b"proxy-connection", b"connection", b"keep-alive"})


@dataclass(frozen=True)
class Asked:
    """One request to the proxy: CONNECT's host:port, or a plain request's absolute URL."""

    method: str
    target: str
    proxy_authorization: str | None


class ConnectProxy:
    """Tunnels CONNECT to the host:port asked for; forwards an absolute-form request to its
    origin, one request per client connection (the request goes on with `Connection: close`,
    so its answer ends the connection). `asked` records every request, in order. With
    `refuse`, every request is answered with that status instead (a 407, a 403)."""

    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.asked: list[Asked] = []
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    @property
    def tunnels(self) -> list[str]:
        return [a.target for a in self.asked if a.method == "CONNECT"]

    @property
    def forwarded(self) -> list[str]:
        return [a.target for a in self.asked if a.method != "CONNECT"]

    def url_with(self, user: str, password: str) -> str:
        """The proxy's URL with a login in it, as HTTPS_PROXY may carry one."""
        return self.url.replace("http://", f"http://{user}:{password}@")

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the forward proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set_result, None)
        self._thread.join(timeout=10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._ready.set()
        async with server:
            await self._stopped
            server.close()
            for writer in list(self._open):
                writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self._one(reader, writer)
        finally:
            self._open.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.decode("latin-1").split(" ")
        fields = [tuple(line.split(b":", 1)) for line in lines]
        named = {name.strip().lower(): value.strip().decode("latin-1") for name, value in fields}
        self.asked.append(Asked(method, target, named.get(b"proxy-authorization")))
        if self.refuse is not None:
            writer.write(f"HTTP/1.1 {self.refuse} Refused\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            origin = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        else:
            url = urlsplit(target)
            origin = await asyncio.open_connection(url.hostname, url.port or 80)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = [b":".join(f) for f in fields if f[0].strip().lower() not in HOP_FIELDS]
            origin[1].write(
                b"\r\n".join([f"{method} {path} {version}".encode(), *kept, b"Connection: close"])
                + b"\r\n\r\n"
            )
        await _pipe_both(reader, writer, *origin)


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    origin_reader: asyncio.StreamReader,
    origin_writer: asyncio.StreamWriter,
) -> None:
    """Bytes both ways until either side closes; then both are closed."""

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()

    try:
        tasks = [
            asyncio.create_task(pipe(reader, origin_writer)),
            asyncio.create_task(pipe(origin_reader, writer)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
    finally:
        origin_writer.close()
