"""Redis-store specifics: key layout, TTLs, generations, corrupt values, failure mapping."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from proxy.cache.ports import ForeignValue, KeptCuts, StoreError, StoreRefused
from proxy.core.cuts import MAX_RECENT_CUTS
from proxy.core.model import Entry, EntryKey
from proxy.store.causes import store_error
from proxy.store.connection import connect
from proxy.store.redis import (
    CUTS_EXPIRED_KEY,
    CUTS_KEY,
    INVALIDATED_CHANNEL,
    RedisStore,
    entry_redis_key,
    generation_redis_key,
)
from tests.servers import RedisServer, free_port

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
KEY = EntryKey(RUN, "run:scope")


def entry(generation: int = 0) -> Entry:
    return Entry(200, "application/json", b"{}", '"e"', 1.7e9, 60, 540, generation)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    corrupt: list[int] = []
    s = RedisStore(
        connect(redis_url, cluster=False, timeout=1), 1, on_corrupt=lambda: corrupt.append(1)
    )
    s.corrupt = corrupt  # type: ignore[attr-defined]
    yield s
    await s.close()


async def test_keys_share_the_run_hash_tag(store: RedisStore, redis_server: RedisServer) -> None:
    await store.save(KEY, entry())

    keys = [k.decode() for k in redis_server.client().scan_iter()]

    assert keys == [f"lcp:1:{{{RUN}}}:run:scope"]
    assert entry_redis_key(KEY) == keys[0]
    assert generation_redis_key(RUN) == f"lcp:1:{{{RUN}}}:gen"


async def test_physical_ttl_is_fresh_plus_stale(
    store: RedisStore, redis_server: RedisServer
) -> None:
    await store.save(KEY, entry())

    ttl_ms = redis_server.client().pttl(entry_redis_key(KEY))

    assert 599_000 < ttl_ms <= 600_000


async def test_entry_behind_the_run_generation_is_a_miss(
    store: RedisStore, redis_server: RedisServer
) -> None:
    await store.save(KEY, entry(generation=0))
    redis_server.client().incr(generation_redis_key(RUN))

    found = await store.lookup(KEY)
    await store.save(KEY, entry(generation=found.generation))

    assert found.entry is None
    assert found.generation == 1
    assert (await store.lookup(KEY)).entry is not None


async def test_corrupt_or_foreign_value_is_a_counted_miss(
    store: RedisStore, redis_server: RedisServer
) -> None:
    redis_server.client().set(entry_redis_key(KEY), b"not ours")

    found = await store.lookup(KEY)
    await store.save(KEY, entry())

    assert found.entry is None
    assert store.corrupt == [1]  # type: ignore[attr-defined]
    assert (await store.lookup(KEY)).entry is not None


async def test_unreachable_redis_raises_store_error_quickly() -> None:
    store = RedisStore(connect(f"redis://127.0.0.1:{free_port()}", cluster=False, timeout=0.2), 0.2)
    started = time.monotonic()

    with pytest.raises(StoreError):
        await store.lookup(KEY)
    with pytest.raises(StoreError):
        await store.save(KEY, entry())
    with pytest.raises(StoreError):
        await store.ping()

    assert time.monotonic() - started < 2
    await store.close()


async def test_unreachable_cluster_raises_store_error() -> None:
    store = RedisStore(connect(f"redis://127.0.0.1:{free_port()}", cluster=True, timeout=0.2), 0.2)

    with pytest.raises(StoreError):
        await store.lookup(KEY)
    with pytest.raises(StoreError):
        await store.ping()


@pytest.mark.parametrize(
    ("raised", "becomes"),
    [
        (OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."), StoreRefused),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots"), StoreRefused),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), ForeignValue),
        (ReadOnlyError("You can't write against a read only replica."), StoreError),
        (ClusterDownError("CLUSTERDOWN The cluster is down"), StoreError),
        (TryAgainError("TRYAGAIN"), StoreError),
        (ResponseError("BUSY Redis is busy running a script."), StoreError),
        (ConnectionError("Connection refused"), StoreError),
    ],
)
def test_error_replies_map_to_refused_foreign_or_down(
    raised: Exception, becomes: type[StoreError]
) -> None:
    # only a store that is up but refuses writes keeps the breaker closed (store/guard.py)
    assert type(store_error("save", raised)) is becomes


async def test_a_cut_is_kept_moves_only_forward_and_is_announced(
    store: RedisStore, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe(INVALIDATED_CHANNEL)
    pubsub.get_message(timeout=1.0)  # the subscription itself

    await store.declare_cut("writer", 1.8e9 + 0.5, window=3, keep_for=700)
    await store.declare_cut("writer", 1.8e9, window=3, keep_for=700)  # older: changes nothing

    assert await store.read_cuts() == KeptCuts(0.0, {"writer": 1.8e9 + 0.5})
    assert 699_000 < client.pttl(CUTS_KEY) <= 700_000
    announced = [pubsub.get_message(timeout=1.0) for _ in range(2)]
    assert [m["data"] for m in announced if m] == [
        b"cut writer 1800000000.500000",
        b"cut writer 1800000000.000000",
    ]
    pubsub.close()


async def test_cuts_older_than_the_window_fold_into_the_expired_mark(store: RedisStore) -> None:
    await store.declare_cut("early", 1.8e9, window=3, keep_for=700)
    await store.declare_cut("middle", 1.8e9 + 2, window=3, keep_for=700)
    await store.declare_cut("late", 1.8e9 + 4, window=3, keep_for=700)

    # "early" no longer matters one by one, but a replica reading back must know it expired
    assert await store.read_cuts() == KeptCuts(1.8e9, {"middle": 1.8e9 + 2, "late": 1.8e9 + 4})


async def test_the_kept_cuts_are_bounded(store: RedisStore, redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.zadd(CUTS_KEY, {f"writer-{n}": 1.8e9 + n * 1e-3 for n in range(MAX_RECENT_CUTS)})

    await store.declare_cut("one-more", 1.8e9 + 5, window=100, keep_for=700)

    kept = await store.read_cuts()
    assert len(kept.recent) == MAX_RECENT_CUTS
    assert "writer-0" not in kept.recent
    assert kept.expired_before == 1.8e9  # the one trimmed: its entries count as expired


async def test_cuts_that_are_not_ours_are_skipped(
    store: RedisStore, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    client.zadd(CUTS_KEY, {"other": 1.5})
    client.set(CUTS_EXPIRED_KEY, "soon")
    assert await store.read_cuts() == KeptCuts(0.0, {"other": 1.5})
