"""The aiohttp upstream adapter against a real HTTP server: connections come back to the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.cache.ports import UpstreamRequest, UpstreamTimeout
from proxy.upstream.client import AiohttpUpstream
from tests.fake_lunary import FakeLunary
from tests.servers import ServerThread


async def test_an_unread_rest_closed_at_once_frees_its_connection(
    upstream: ServerThread, fake: FakeLunary
) -> None:
    """A body over the entry limit, closed without reading on: with a pool of one connection,
    the next fetch must not wait for a connection that was never released."""
    key, run = fake.add_key(), fake.add_run(size=8_000_000)  # more than socket buffers hold
    client = AiohttpUpstream(upstream.url, timeout=2, max_connections=1)
    request = UpstreamRequest(
        "GET", f"/v1/runs/{run}".encode(), b"", [(b"x-api-key", key.encode())]
    )
    try:
        partial = await client.fetch(request, max_body=1000)
        assert not partial.complete
        assert partial.rest is not None
        await partial.rest.aclose()

        whole = await asyncio.wait_for(client.fetch(request, max_body=1 << 24), 1.5)
        assert whole.complete
        assert whole.status == 200
    finally:
        await client.close()


async def test_an_upstream_that_stops_reading_the_body_times_out() -> None:
    """aiohttp has no write timeout of its own: the adapter's must end the request."""
    connections: list[asyncio.StreamWriter] = []

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")  # the head, then never another byte read

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def endless_body() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536
            await asyncio.sleep(0)

    client = AiohttpUpstream(f"http://127.0.0.1:{port}", timeout=0.5, max_connections=4)
    request = UpstreamRequest("POST", b"/v1/runs/ingest", b"", [], endless_body())
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout):
            await asyncio.wait_for(client.stream(request), 10)
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await client.close()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
