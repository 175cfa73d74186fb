"""The proxy's upstream adapter (httpx on the aiohttp transport) against real sockets: each
failure is the UpstreamError it is, the request goes out as built, connections come back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from proxy.cache.ports import UpstreamError, UpstreamRequest, UpstreamTimeout, UpstreamUnreachable
from proxy.upstream import LunaryUpstream
from tests.fake_lunary import FakeLunary
from tests.servers import ServerThread

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Call = Literal["fetch", "stream"]


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """An HTTP/1.1 upstream on a loopback port, written by hand; yields its URL."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await handler(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """A loopback port whose listen queue is full: the kernel drops every further SYN, so a
    connection there is never refused and never made, as behind a firewall that drops."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    queued: list[socket.socket] = []
    try:
        while len(queued) < 64:
            sock = socket.socket()
            sock.settimeout(0.2)
            try:
                sock.connect(address)
            except TimeoutError:
                sock.close()
                break
            queued.append(sock)
        else:
            raise RuntimeError("the listen queue never filled")
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        for sock in queued:
            sock.close()
        listener.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def get(path: bytes = b"/v1/runs/count", query: bytes = b"") -> UpstreamRequest:
    return UpstreamRequest("GET", path, query, [(b"x-api-key", b"key")])


async def send(client: LunaryUpstream, call: Call, request: UpstreamRequest) -> bytes:
    """The whole answer's body, through fetch or through stream."""
    if call == "fetch":
        return (await client.fetch(request, max_body=1 << 20)).body
    answer = await client.stream(request)
    try:
        return b"".join([chunk async for chunk in answer.chunks])
    finally:
        await answer.aclose()


async def failure(url: str, call: Call, upstream_timeout: float = 0.3) -> UpstreamError:
    """What `call` raised against `url`, with the given upstream timeout (seconds)."""
    client = LunaryUpstream(url, timeout=upstream_timeout, max_connections=2)
    try:
        with pytest.raises(UpstreamError) as raised:
            await asyncio.wait_for(send(client, call, get()), 10)
    finally:
        await client.close()
    return raised.value


async def answer_head_then(
    rest: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await writer.drain()
        await rest(writer)

    return handler


# -- each failure is what it is: unreachable (502) or a timeout (504) ---------------------------


@pytest.mark.parametrize("call", ["fetch", "stream"])
async def test_a_refused_connection_is_unreachable_not_a_timeout(call: Call) -> None:
    """httpx-aiohttp's own mapping calls this a ConnectTimeout: it must stay a 502."""
    error = await failure(closed_port_url(), call)

    assert isinstance(error, UpstreamUnreachable)
    assert not isinstance(error, UpstreamTimeout)


@pytest.mark.parametrize("call", ["fetch", "stream"])
async def test_a_name_that_does_not_resolve_is_unreachable_not_a_timeout(call: Call) -> None:
    """A misspelt PROXY_UPSTREAM_URL host (`.invalid` never resolves, RFC 6761): a 502. The
    timeout is long, so a slow resolver cannot turn it into the timeout it must not be."""
    error = await failure("http://lunary.invalid", call, upstream_timeout=5)

    assert isinstance(error, UpstreamUnreachable)
    assert not isinstance(error, UpstreamTimeout)


@pytest.mark.parametrize("call", ["fetch", "stream"])
async def test_a_connection_never_accepted_is_a_timeout(call: Call) -> None:
    with blackhole() as url:
        error = await failure(url, call)

    assert isinstance(error, UpstreamTimeout)


@pytest.mark.parametrize("call", ["fetch", "stream"])
async def test_an_answer_that_never_comes_is_a_timeout(call: Call) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)

    async with serving(silent) as url:
        error = await failure(url, call)

    assert isinstance(error, UpstreamTimeout)


@pytest.mark.parametrize("call", ["fetch", "stream"])
async def test_a_body_that_stops_coming_is_a_timeout(call: Call) -> None:
    async with serving(await answer_head_then(lambda _: asyncio.sleep(30))) as url:
        error = await failure(url, call)

    assert isinstance(error, UpstreamTimeout)


@pytest.mark.parametrize("call", ["fetch", "stream"])
async def test_a_connection_reset_within_the_body_is_unreachable(call: Call) -> None:
    async def reset(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)  # the head is read and the answer handed out first
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, not a FIN

    async with serving(await answer_head_then(reset)) as url:
        error = await failure(url, call)

    assert isinstance(error, UpstreamUnreachable)


@pytest.mark.parametrize("call", ["fetch", "stream"])
async def test_a_connection_closed_before_any_answer_is_unreachable(call: Call) -> None:
    """httpx-aiohttp's own mapping calls aiohttp's ServerDisconnectedError a ConnectTimeout."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with serving(hang_up) as url:
        error = await failure(url, call)

    assert isinstance(error, UpstreamUnreachable)


async def test_waiting_for_a_pooled_connection_is_a_timeout() -> None:
    """One connection, held by an answer still being relayed: the next request times out."""
    async with serving(await answer_head_then(lambda _: asyncio.sleep(30))) as url:
        client = LunaryUpstream(url, timeout=0.3, max_connections=1)
        try:
            holding = await client.stream(get())
            with pytest.raises(UpstreamTimeout):
                await asyncio.wait_for(client.stream(get()), 10)
            await holding.aclose()
        finally:
            await client.close()


async def test_an_upstream_that_stops_reading_the_body_times_out() -> None:
    """aiohttp has no write timeout of its own: the adapter's must end the request."""

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head, then never another byte read
        await asyncio.sleep(30)

    async def endless_body() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536
            await asyncio.sleep(0)

    async with serving(stall) as url:
        client = LunaryUpstream(url, timeout=0.5, max_connections=4)
        request = UpstreamRequest("POST", b"/v1/runs/ingest", b"", [], endless_body())
        try:
            with pytest.raises(UpstreamTimeout):
                await asyncio.wait_for(client.stream(request), 10)
        finally:
            await client.close()


async def test_a_body_that_fails_to_read_raises_its_own_error() -> None:
    """A spooled body whose file fails is the caller's to answer (503), not the upstream's."""

    class SpoolBroke(Exception):
        pass

    async def read_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def failing_body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        raise SpoolBroke

    async with serving(read_all) as url:
        client = LunaryUpstream(url, timeout=2, max_connections=1)
        headers = [(b"content-length", b"5000")]
        try:
            with pytest.raises(SpoolBroke):
                await client.stream(UpstreamRequest("POST", b"/x", b"", headers, failing_body()))
        finally:
            await client.close()


# -- the request goes out as it was built ------------------------------------------------------


async def test_the_request_goes_out_as_the_client_wrote_it() -> None:
    """The target unquoted and unnormalised, repeated header lines kept apart, UTF-8 values
    unchanged, and nothing of httpx's or aiohttp's own (User-Agent, Accept, ...)."""
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with serving(record) as url:
        client = LunaryUpstream(url + "/base/", timeout=2, max_connections=1)
        headers = [(b"x-tag", b"a"), (b"x-tag", "caf\u00e9".encode()), (b"x-api-key", b"k")]
        request = UpstreamRequest("GET", b"/v1/runs/{ab}/%61%c3%a9|x", b"q=%7e&b=|", headers)
        try:
            fetched = await client.fetch(request, max_body=100)
        finally:
            await client.close()

    assert fetched.body == b"ok"
    request_line, *lines = heads[0].rstrip(b"\r\n").split(b"\r\n")
    assert request_line == b"GET /base/v1/runs/{ab}/%61%c3%a9|x?q=%7e&b=| HTTP/1.1"
    names = [line.split(b":", 1)[0].lower() for line in lines]
    assert sorted(names) == [b"host", b"x-api-key", b"x-tag", b"x-tag"]
    assert b"x-tag: caf\xc3\xa9" in lines


async def test_a_cookie_the_upstream_sets_is_never_sent_again() -> None:
    """Set-Cookie is relayed to its client, never kept for the next request (another's)."""
    heads: list[bytes] = []

    async def set_cookie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=s1; Path=/\r\n")
            writer.write(b"Content-Length: 0\r\n\r\n")
            await writer.drain()

    async with serving(set_cookie) as url:
        client = LunaryUpstream(url, timeout=2, max_connections=1)
        try:
            first = await client.fetch(get(), max_body=100)
            await client.fetch(get(), max_body=100)
        finally:
            await client.close()

    assert (b"set-cookie", b"session=s1; Path=/") in first.headers
    assert len(heads) == 2
    assert b"cookie" not in heads[1].lower()


async def test_no_netrc_login_is_added_to_a_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's trust_env reads ~/.netrc: a login for the upstream host would go out on every
    request that carries no Authorization (and make those that carry one fail)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async with serving(record) as url:
        client = LunaryUpstream(url, timeout=2, max_connections=1)
        bearer = UpstreamRequest("GET", b"/x", b"", [(b"authorization", b"Bearer k")])
        try:
            anonymous = await client.fetch(UpstreamRequest("GET", b"/x", b"", []), 100)
            with_bearer = await client.fetch(bearer, 100)
        finally:
            await client.close()

    assert [anonymous.status, with_bearer.status] == [200, 200]
    assert b"authorization" not in heads[0].lower()
    assert b"authorization: Bearer k" in heads[1]


async def test_no_log_line_is_written_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """httpx logs each request at INFO, the proxy's default level: a line per miss, beside
    the access line that already says it."""
    caplog.set_level(logging.DEBUG)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with serving(answer) as url:
        client = LunaryUpstream(url, timeout=2, max_connections=1)
        try:
            fetched = await client.fetch(get(), max_body=100)
        finally:
            await client.close()

    assert fetched.status == 200
    assert [record.getMessage() for record in caplog.records if record.name == "httpx"] == []


# -- connections come back to the pool --------------------------------------------------------


async def test_an_unread_rest_closed_at_once_frees_its_connection(
    upstream: ServerThread, fake: FakeLunary
) -> None:
    """A body over the entry limit, closed without reading on: with a pool of one connection,
    the next fetch must not wait for a connection that was never released."""
    key, run = fake.add_key(), fake.add_run(size=8_000_000)  # more than socket buffers hold
    client = LunaryUpstream(upstream.url, timeout=2, max_connections=1)
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


async def test_answers_read_whole_reuse_one_connection() -> None:
    connections = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()

    async with serving(keep_alive) as url:
        client = LunaryUpstream(url, timeout=2, max_connections=4)
        try:
            bodies = [await send(client, call, get()) for call in ("fetch", "stream") * 3]
        finally:
            await client.close()

    assert bodies == [b"hello"] * 6
    assert connections == 1


async def test_a_bad_ca_bundle_setting_does_not_stop_a_plain_http_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TLS is the aiohttp session's, read at a handshake: building the client reads no CA
    bundle, so SSL_CERT_FILE pointing nowhere cannot stop start-up (it did once: httpx-aiohttp
    built a context of its own)."""

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        writer.close()

    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    async with serving(hello) as url:
        client = LunaryUpstream(url, timeout=2, max_connections=1)
        try:
            body = await send(client, "fetch", get())
        finally:
            await client.close()

    assert body == b"hello"


@pytest.mark.parametrize("call", ["fetch", "stream"])
async def test_a_request_after_close_is_unreachable(call: Call) -> None:
    """A request that outlives the shutdown grace period: a 502, not an unexpected error."""
    client = LunaryUpstream(closed_port_url(), timeout=1, max_connections=1)
    await client.close()

    with pytest.raises(UpstreamUnreachable):
        await send(client, call, get())
