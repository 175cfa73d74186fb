"""An upstream that writes responses nobody asked for must not get them paired with requests.

HTTP/1.1 has no request ids: a response is paired with a request only by its order on the
connection. A response that arrives on an idle pooled connection, or one more than was asked for,
would answer the next request sent there (another credential's), and shift every later answer on
that connection by one, each then cached under the wrong scope. The proxy must close such a
connection instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson

from proxy.cache.ports import UpstreamRequest
from proxy.upstream import LunaryUpstream
from tests.conftest import ProxyFactory
from tests.servers import InjectingUpstream, answer_tag

INJECT_AFTER = 0.3  # seconds after an answer, as the issue reproduced it
IDLE_PAUSE = INJECT_AFTER + 0.5  # between rounds: every injection lands on an idle connection
ROUNDS = 12
CREDENTIALS = (
    ("Authorization", "Bearer key-a"),
    ("Authorization", "Bearer key-b"),
    ("X-API-Key", "key-c"),
    ("X-API-Key", "key-d"),
)


@dataclass(frozen=True)
class Read:
    credential: tuple[str, str]
    path: str

    @property
    def expected(self) -> str:
        name, value = self.credential
        authorization = value if name == "Authorization" else ""
        api_key = value if name == "X-API-Key" else ""
        return answer_tag("GET", self.path, authorization, api_key)


def round_of_reads(number: int, earlier: list[Read]) -> list[Read]:
    """Per credential: a run of its own, a run every credential reads (one entry per scope),
    a re-read of an earlier run (a HIT), and two passthrough paths."""
    shared = f"/v1/runs/{uuid.uuid4()}"
    reads = []
    for index, credential in enumerate(CREDENTIALS):
        reads += [
            Read(credential, f"/v1/runs/{uuid.uuid4()}"),
            Read(credential, shared),
            Read(credential, f"/v1/templates/r{number}-c{index}"),
            Read(credential, f"/v1/users/me/r{number}-c{index}"),
        ]
        mine = [read for read in earlier if read.credential == credential]
        if mine:
            reads.append(mine[number % len(mine)])
    return reads


async def misdelivered(client: httpx.AsyncClient, reads: list[Read]) -> list[str]:
    """Every read at once; what each one got that was not the answer to it."""
    responses = await asyncio.gather(
        *(client.get(read.path, headers=dict([read.credential])) for read in reads)
    )
    wrong = []
    for read, response in zip(reads, responses, strict=True):
        got = orjson.loads(response.content).get("answers") if response.status_code == 200 else ""
        if got != read.expected:
            cache = response.headers.get("x-cache", "passthrough")
            wrong.append(f"{read.path} ({cache}, {response.status_code}): {got}")
    return wrong


async def test_responses_injected_on_idle_connections_never_reach_a_client(
    make_proxy: ProxyFactory,
) -> None:
    """Rounds of concurrent reads over several credentials, cached and passthrough routes, each
    round after the previous one's connections were injected into; then every cached read
    again, all HITs now: each answer must name the request it answers."""
    with InjectingUpstream(delay=INJECT_AFTER) as upstream:
        proxy = make_proxy(upstream_url=upstream.url)
        cached: list[Read] = []
        wrong: list[str] = []
        sent = 0
        async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
            for number in range(ROUNDS):
                reads = round_of_reads(number, cached)
                wrong += await misdelivered(client, reads)
                sent += len(reads)
                cached += [read for read in reads if read.path.startswith("/v1/runs/")]
                await asyncio.sleep(IDLE_PAUSE)
            hits = list(set(cached))
            wrong += await misdelivered(client, hits)
            sent += len(hits)
            recheck = await asyncio.gather(
                *(client.get(read.path, headers=dict([read.credential])) for read in hits)
            )
        injections = upstream.injections
        assert sent > 200
        assert injections >= ROUNDS, "the upstream never injected: the test tests nothing"
        assert wrong == [], f"{len(wrong)} of {sent} answers misdelivered: {wrong[:5]}"
        assert {response.headers["x-cache"] for response in recheck} == {"HIT"}
        # a connection that was injected into was closed, not kept in the pool
        await _until(lambda: not upstream.open, "connections injected into were left open")


async def test_the_adapter_closes_a_pooled_connection_that_receives_bytes() -> None:
    """One pooled connection, reused after an injection landed on it: the next fetch must get
    its own answer, over a new connection."""
    with InjectingUpstream(delay=0.05) as upstream:
        client = LunaryUpstream(upstream.url, timeout=2, max_connections=1)
        try:
            for number in range(6):
                token = f"key-{number % 2}"
                path = f"/v1/runs/{uuid.uuid4()}"
                request = UpstreamRequest(
                    "GET", path.encode(), b"", [(b"x-api-key", token.encode())]
                )
                answer = await client.fetch(request, max_body=1 << 20)
                got = orjson.loads(answer.body)["answers"]
                assert got == answer_tag("GET", path, "", token), f"fetch {number} got {got}"
                await _injected(upstream, number + 1)
                await asyncio.sleep(0.05)  # for the injected bytes to reach the client
            assert upstream.connections == 6  # each injected connection was dropped
        finally:
            await client.close()


async def _injected(upstream: InjectingUpstream, count: int) -> None:
    await _until(lambda: upstream.injections >= count, "no injection came")


async def _until(condition: Callable[[], bool], message: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.02)


async def test_a_response_sent_along_with_the_end_of_an_answer_is_never_paired() -> None:
    """The end of an answer's body and one more whole response in one write: aiohttp returns the
    connection to the pool as the body ends, mid-parse, before it queues the second response."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                target = head.split(b" ", 2)[1].decode()
                body = f'{{"answers":"{target}"}}'.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                writer.write(body[:5])
                await writer.drain()
                await asyncio.sleep(0.05)  # the head is parsed and the answer handed out
                writer.write(body[5:] + response(b'{"answers":"poison"}'))
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = LunaryUpstream(f"http://127.0.0.1:{port}", timeout=2, max_connections=1)
    try:
        for number in range(4):
            path = f"/v1/templates/{number}"
            fetched = await client.fetch(UpstreamRequest("GET", path.encode(), b"", []), 1 << 20)
            assert orjson.loads(fetched.body)["answers"] == path
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


def response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
