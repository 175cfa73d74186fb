"""The cross-replica fill lock: leases, compare-and-delete, and wake-ups, on fakeredis and on
a real Redis (what only a real server can tell, its command statistics, on the real one only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.core.model import Entry, EntryKey
from proxy.store.connection import close_client
from proxy.store.notify import FillNotices
from proxy.store.redis import FILLED_CHANNEL, INVALIDATED_CHANNEL, RedisStore, entry_redis_key
from tests.servers import RedisServer
from tests.store.backends import REDIS_BACKENDS, ClientFactory, real_redis, redis_backend

KEY = EntryKey("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "run:scope")
ENTRY = Entry(200, "application/json", b"{}", '"e"', 1.7e9, 60, 0)


class Replica:
    """One replica's store with its own pub/sub listener, as the app wires them."""

    def __init__(self, clients: ClientFactory) -> None:
        self.notices = FillNotices(clients(None), FILLED_CHANNEL, INVALIDATED_CHANNEL)
        self.store = RedisStore(clients(1), 1, notices=self.notices)
        self.listener = asyncio.create_task(self.notices.run())

    async def close(self) -> None:
        self.listener.cancel()
        await asyncio.gather(self.listener, return_exceptions=True)
        await self.store.close()
        await self.notices.close()


async def start_replicas(clients: ClientFactory) -> tuple[Replica, Replica]:
    a, b = Replica(clients), Replica(clients)
    await asyncio.wait_for(
        asyncio.gather(a.notices.subscribed.wait(), b.notices.subscribed.wait()), 5
    )
    return a, b


async def stored(clients: ClientFactory, redis_key: str) -> bool:
    """Whether `redis_key` is in the shared Redis, asked on a client of its own."""
    client = clients(1)
    try:
        return bool(await client.exists(redis_key))
    finally:
        await close_client(client)


@pytest.fixture(params=REDIS_BACKENDS)
def clients(request: pytest.FixtureRequest) -> ClientFactory:
    """The Redis both replicas share: fakeredis, or the real server."""
    return redis_backend(request)


@pytest.fixture
async def replicas(clients: ClientFactory) -> AsyncIterator[tuple[Replica, Replica]]:
    a, b = await start_replicas(clients)
    yield a, b
    await a.close()
    await b.close()


@pytest.fixture
async def real_replicas(redis_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    """Two replicas on the real server, for what only it can tell (INFO, PUBSUB NUMSUB)."""
    a, b = await start_replicas(real_redis(redis_url))
    yield a, b
    await a.close()
    await b.close()


async def test_one_leader_per_key(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas

    assert await a.store.begin_fill(KEY, "token-a", lease=5) is True
    assert await b.store.begin_fill(KEY, "token-b", lease=5) is False
    assert await b.store.begin_fill(EntryKey(KEY.run_id, "run:other"), "token-b", 5) is True


async def test_a_slow_leader_never_releases_a_newer_lock(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    assert await a.store.begin_fill(KEY, "slow", lease=0.2)
    await asyncio.sleep(0.3)  # the slow leader's lease ran out
    assert await b.store.begin_fill(KEY, "newer", lease=5)

    await a.store.end_fill(KEY, "slow", ENTRY)  # its result still lands, but the lock stays

    assert await a.store.begin_fill(KEY, "third", lease=5) is False
    assert (await a.store.lookup(KEY)).entry == ENTRY


async def test_waiters_are_woken_when_the_entry_lands(
    replicas: tuple[Replica, Replica], clients: ClientFactory
) -> None:
    a, b = replicas
    assert await a.store.begin_fill(KEY, "leader", lease=5)

    with b.store.watch_fill(KEY) as landed:
        assert landed is not None
        assert await b.store.begin_fill(KEY, "waiter", lease=5) is False
        await a.store.end_fill(KEY, "leader", ENTRY)
        await asyncio.wait_for(landed, 2)

    assert (await b.store.lookup(KEY)).entry == ENTRY
    assert await stored(clients, entry_redis_key(KEY))


async def test_uncontended_fills_publish_nothing(
    real_replicas: tuple[Replica, Replica], redis_server: RedisServer
) -> None:
    a, _ = real_replicas
    redis_server.client().config_resetstat()
    published = redis_server.client().pubsub_numsub(FILLED_CHANNEL)[0][1]

    assert await a.store.begin_fill(KEY, "only", lease=5)
    with a.store.watch_fill(KEY) as landed:
        await a.store.end_fill(KEY, "only", ENTRY)
        await asyncio.sleep(0.2)
        assert landed is not None
        assert not landed.done()  # nobody flagged a wait, so nothing was announced
    assert published == 2  # both replicas listen: silence is the leader's choice
    assert "cmdstat_publish" not in redis_server.client().info("commandstats")


async def test_a_stale_leader_does_not_take_the_wake_up_a_newer_leader_owes(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    assert await a.store.begin_fill(KEY, "stale-leader", lease=0.2)
    await asyncio.sleep(0.3)
    assert await a.store.begin_fill(KEY, "newer-leader", lease=5)

    with b.store.watch_fill(KEY) as landed:
        assert landed is not None
        assert await b.store.begin_fill(KEY, "waiter", lease=5) is False
        await a.store.end_fill(KEY, "stale-leader", None)  # lease long gone
        await asyncio.sleep(0.2)
        woken_early = landed.done()
        await a.store.end_fill(KEY, "newer-leader", ENTRY)
        await asyncio.wait_for(landed, 2)

    assert not woken_early


async def test_only_the_leader_is_handed_the_current_entry(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    await a.store.save(KEY, ENTRY)

    leader = await a.store.lead_fill(KEY, "token-a", lease=5)
    follower = await b.store.lead_fill(KEY, "token-b", lease=5)

    assert leader is not None
    assert leader.entry == ENTRY
    assert follower is None  # another replica leads: b waits for it instead
