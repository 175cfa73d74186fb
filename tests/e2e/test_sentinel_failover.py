"""A Sentinel failover under load: the master killed, its replica promoted, the proxy follows.

Clients keep reading through the failover. While the store switches, reads are answered from
Lunary (the fail-open path, BYPASS); every answer must still be a 200 with the right body. Then
the proxy must find the promoted node by itself within the breaker's window, store fills there
again, and never answer a run written through it in its old form, even when the write's
invalidation came while the master was gone.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, RedisSentinelServers, ServerThread, replica_settings

WORKERS = 8
STATIC_RUNS = 12
BEFORE_KILL = 0.7  # seconds of load on the healthy master first
# the breaker skips the store for 1 s after a failure, then lets one request probe it
# (proxy/store/guard.py): once the replica is promoted the proxy must cache again within
# about that; three times it, for a loaded CI machine
FOLLOW_WITHIN = 3.0
SETTLED = 1.0  # at the end of the load, this long without a single BYPASS
FRESH = "fresh"  # a target: a run nobody read before, so its read is a fill


@pytest.fixture
def sentinel() -> Iterator[RedisSentinelServers]:
    """A master, a replica and a sentinel of our own (the test kills the master), with a
    failover that takes a few seconds, not the default minutes."""
    servers = RedisSentinelServers(down_after_ms=1000, failover_timeout_ms=2000)
    try:
        servers.start()
        servers.wait_for_replica()
        yield servers
    finally:
        servers.close()


@dataclass(frozen=True)
class Read:
    run: str
    sent: float
    took: float
    status: int  # 0: no HTTP answer at all
    cache: str
    cache_status: str
    body: Any


@dataclass(frozen=True)
class Write:
    run: str
    tags: list[str]
    acknowledged: float
    status: int


@dataclass
class Failover:
    """When the master died and its replica took over, and the writes made meanwhile."""

    killed: float = 0.0
    promoted: float = 0.0
    promoted_port: int = 0
    writes: list[Write] = field(default_factory=list)


class Readers:
    """Clients reading warmed runs, the runs that get written, and new runs, round robin."""

    def __init__(
        self, client: httpx.AsyncClient, url: str, fake: FakeLunary, key: str, runs: list[str]
    ) -> None:
        self._client, self._url, self._fake, self._key = client, url, fake, key
        self._targets = itertools.cycle(runs)
        self.reads: list[Read] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            target = next(self._targets)
            run = self._fake.add_run() if target == FRESH else target
            self.reads.append(await self.read(run))

    async def read(self, run: str) -> Read:
        sent = time.monotonic()
        try:
            answer = await self._client.get(
                f"{self._url}/v1/runs/{run}", headers={"X-API-Key": self._key}
            )
        except httpx.HTTPError:
            return Read(run, sent, time.monotonic() - sent, 0, "", "", None)
        try:
            body = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            body = None
        headers = answer.headers
        took = time.monotonic() - sent
        return Read(
            run, sent, took, answer.status_code, headers.get("x-cache", ""),
            headers.get("cache-status", ""), body,
        )  # fmt: skip


async def write_tags(
    client: httpx.AsyncClient, url: str, key: str, run: str, tags: list[str]
) -> Write:
    """A write through the proxy: Lunary changes the run, the proxy invalidates it."""
    answer = await client.patch(
        f"{url}/v1/runs/{run}/tags", headers={"X-API-Key": key}, json={"tags": tags}
    )
    return Write(run, tags, time.monotonic(), answer.status_code)


def wrong_answers(reads: list[Read], fake: FakeLunary, before: dict[str, Any]) -> list[Read]:
    """Reads that are not a 200 with the run as Lunary has it: the run as it is now, or, for a
    written run, as it was before a write acknowledged after the read was sent."""
    wrong = []
    for read in reads:
        versions = [fake.shown(read.run)]
        if read.run in before:
            versions.append(before[read.run])
        if read.status != 200 or read.body not in versions:
            wrong.append(read)
    return wrong


def stale_answers(reads: list[Read], writes: list[Write], fake: FakeLunary) -> list[Read]:
    """Reads sent after a write's answer that still show the run as it was before."""
    acknowledged = {write.run: write.acknowledged for write in writes}
    return [
        read
        for read in reads
        if read.run in acknowledged
        and read.sent > acknowledged[read.run]
        and read.body != fake.shown(read.run)
    ]


def stored_on(node_client: Any, run: str) -> bool:
    """Whether the node holds a cache entry of `run` (not only its generation or a lock)."""
    keys = node_client.scan_iter(match=f"lcp:1:{{{run}}}:*")
    return any(not k.endswith(b":gen") and b":lock:" not in k and b":wait:" not in k
               for k in keys)  # fmt: skip


async def test_the_proxy_follows_a_sentinel_failover_under_load(
    upstream: ServerThread, fake: FakeLunary, sentinel: RedisSentinelServers
) -> None:
    key = fake.add_key()
    static = [fake.add_run() for _ in range(STATIC_RUNS)]
    written = [fake.add_run(), fake.add_run()]
    before = {run: fake.shown(run) for run in written}
    # the written runs come round often, so an old entry would be read back at once
    targets = [
        target
        for i, run in enumerate(static)
        for target in (run, written[i % 2], *((FRESH,) if i % 3 == 0 else ()))
    ]
    # a dead node refuses at once, so the store timeout is not what the failover waits on; 1 s
    # keeps a loaded machine's slow call from reading as an outage after the proxy followed
    settings = replica_settings(upstream.url, sentinel.url, upstream_timeout="2", redis_timeout="1")
    failover = Failover()
    stop = asyncio.Event()
    with ProxyProcess(**settings) as proxy:
        async with httpx.AsyncClient(timeout=10) as client:
            readers = Readers(client, proxy.url, fake, key, targets)
            warmed = [await readers.read(run) for run in [*static, *written] * 2]
            await asyncio.to_thread(sentinel.wait_for_replica)  # the entries are on the replica

            async def fail_over() -> None:
                await asyncio.sleep(BEFORE_KILL)
                old = await asyncio.to_thread(sentinel.kill_master)
                failover.killed = time.monotonic()  # reads sent from now on cannot reach it
                # while the master is gone: this invalidation cannot reach any store
                failover.writes.append(
                    await write_tags(client, proxy.url, key, written[0], ["during"])
                )
                new = await asyncio.to_thread(sentinel.wait_for_promotion, old, 20.0)
                failover.promoted, failover.promoted_port = time.monotonic(), new.port
                failover.writes.append(
                    await write_tags(client, proxy.url, key, written[1], ["after"])
                )
                await asyncio.sleep(FOLLOW_WITHIN + SETTLED)
                stop.set()

            await asyncio.gather(fail_over(), *(readers.run(stop) for _ in range(WORKERS)))
            final = [await readers.read(run) for run in written * 2]
            ready = (await client.get(proxy.url + "/readyz")).status_code
        promoted = next(
            node for node in (sentinel.master, sentinel.replica)
            if node.port == failover.promoted_port
        )  # fmt: skip
        log = proxy.log()

    reads = readers.reads
    during = [r for r in reads if r.sent >= failover.killed]
    bypassed = [r for r in during if r.cache == "BYPASS"]
    # no in-process tier: a HIT or a stored fill now comes from the promoted node
    hits_again = min((r.sent for r in during if r.cache == "HIT"), default=float("inf"))
    fills_again = [r for r in during if "stored" in r.cache_status]
    first_fill = min((r.sent for r in fills_again), default=float("inf"))
    filled = {r.run for r in fills_again if r.run not in written}
    end = max(r.sent for r in reads)
    print(figures(failover, hits_again, first_fill, during))  # for the report: pytest -s

    assert [r.cache for r in warmed] == ["MISS"] * 14 + ["HIT"] * 14
    assert [w.status for w in failover.writes] == [200, 200]
    # the first write was answered with no master to take its invalidation
    assert failover.writes[0].acknowledged < failover.promoted
    assert len(during) > 100
    assert summary(wrong_answers(reads, fake, before)) == []
    assert summary(stale_answers([*reads, *final], failover.writes, fake)) == []
    assert bypassed, "the proxy never noticed that the master had gone"
    # it follows the promoted node within the breaker's window, reading and filling again
    assert hits_again - failover.promoted < FOLLOW_WITHIN
    assert first_fill - failover.promoted < FOLLOW_WITHIN
    assert summary([r for r in during if r.sent > end - SETTLED and r.cache == "BYPASS"]) == []
    # the fills since landed on the promoted node
    assert filled
    assert [run for run in filled if not stored_on(promoted.client(), run)] == []
    assert [r.body == fake.shown(r.run) for r in final] == [True] * 4
    assert [r.cache for r in final[2:]] == ["HIT", "HIT"]
    assert ready == 200
    assert "Traceback" not in log


def summary(reads: list[Read]) -> list[tuple[str, int, str, str]]:
    """What a failed assertion shows of each read: its run, status, X-Cache and Cache-Status."""
    return [(r.run, r.status, r.cache, r.cache_status) for r in reads]


def figures(failover: Failover, hits_again: float, first_fill: float, during: list[Read]) -> str:
    answers = Counter(f"{r.status} {r.cache}" for r in during)
    return (
        f"master killed -> promoted {failover.promoted - failover.killed:.2f} s, "
        f"-> first HIT {hits_again - failover.killed:.2f} s, "
        f"-> first stored fill {first_fill - failover.killed:.2f} s; "
        f"answers since the kill: {dict(sorted(answers.items()))}; "
        f"slowest read {max(r.took for r in during):.2f} s"
    )
