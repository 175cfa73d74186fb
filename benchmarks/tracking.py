"""Redis's server-assisted client-side caching (CLIENT TRACKING) against our own announcement,
side by side on one redis-server: issue 16 asks which should keep an in-process tier honest.

Three measurements, all with redis.asyncio on loopback:

1. Invalidation delay, from sending a write until a listener hears of it (median, p99):
   ours (EVALSHA of the store's INVALIDATE script, which raises the run's generation and
   PUBLISHes the run id), heard by a redis.asyncio PubSub as the replicas hear it and by a raw
   RESP2 connection as tracking's listener is read (parting the client's share from the
   server's); and CLIENT TRACKING in RESP2 redirect mode (a listener connection takes CLIENT ID
   and SUBSCRIBEs `__redis__:invalidate`; a reading connection runs `CLIENT TRACKING ON
   REDIRECT <id>`), default mode (the reader GETs the generation key before each write) and
   `BCAST PREFIX lcp:1:`. The modes take turns in rounds.
2. What tracking costs the server: the tracking table and used_memory after N tracked reads of
   distinct 2 KB entries, by one reader and then a second (a second replica); and whether
   FLUSHALL, expiry, eviction and a dropped redirect listener reach a listener at all (our design
   covers these with its PROXY_NEAR_TTL confirmation and the listener's heartbeat).
3. The messages BCAST sends per cold miss for keys nobody caches (fill locks, wait flags,
   entries all live under `lcp:1:`): three plain commands, and the store's own fill scripts.

Bounded (well under two minutes), loopback only; the redis-server it starts is stopped by PID.

    python -m benchmarks.tracking [--writes 2000] [--sizes 10000,100000] [--misses 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvloop
from redis.asyncio import Connection, Redis
from redis.asyncio.client import PubSub

from benchmarks.harness import in_turns, require
from proxy.core.model import EntryKey
from proxy.store.redis import (
    BEGIN_FILL,
    END_FILL,
    FILLED_CHANNEL,
    INVALIDATE,
    INVALIDATED_CHANNEL,
    KEY_PREFIX,
    entry_redis_key,
    generation_redis_key,
    lock_redis_key,
    wait_redis_key,
)
from tests.servers import RedisServer

TRACKING_CHANNEL = "__redis__:invalidate"
PUBLISH_LINE = "redis.call('PUBLISH', ARGV[2], ARGV[3])\n"
# The same generation bump without the announcement: what tracking would rely on instead.
BUMP_ONLY = INVALIDATE.replace(PUBLISH_LINE, "")
KEEP_MS = 600_000
LEASE_MS = 31_000  # the fill lock's lease: upstream timeout + 1 s
VALUE = b"x" * 2048
SCOPE = "Q" * 43  # the length of a real scope: unpadded base64url of an HMAC-SHA256
ROUNDS = 4
BATCH = 1000
HEAR_WITHIN = 2.0  # seconds a listener is given to hear of a write before it counts as "no"
MODES = ("ours", "ours-raw", "tracking", "bcast")


@dataclass(frozen=True, slots=True)
class Heard:
    """One message a listener read: when (perf_counter) and the keys it named (None: all)."""

    at: float
    keys: list[bytes] | None


@dataclass
class Listener:
    """Messages a subscribed connection heard, queued as they arrive; `client_id` is the
    connection's CLIENT ID (0 for a redis.asyncio PubSub, which is not a redirect target)."""

    client_id: int
    heard: asyncio.Queue[Heard] = field(default_factory=asyncio.Queue)

    def hear(self, payload: object) -> None:
        at = time.perf_counter()
        if payload is None:  # FLUSHALL: every key
            self.heard.put_nowait(Heard(at, None))
            return
        items = payload if isinstance(payload, list) else [payload]
        keys = [item if isinstance(item, bytes) else str(item).encode() for item in items]
        self.heard.put_nowait(Heard(at, keys))

    async def next(self, within: float = HEAR_WITHIN) -> Heard | None:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.heard.get(), within)
        return None


async def read_raw(connection: Connection, listener: Listener) -> None:
    while True:
        reply = await connection.read_response(timeout=None)
        if isinstance(reply, list) and reply[0] == b"message":
            listener.hear(reply[2])


async def read_pubsub(pubsub: PubSub, listener: Listener) -> None:
    """As proxy/store/notify.py reads its subscription: a redis.asyncio PubSub."""
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
        if message is not None and message["type"] == "message":
            listener.hear(message["data"])


@contextlib.asynccontextmanager
async def reading(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def raw(port: int) -> Connection:
    """A connection of its own (it connects on its first command), RESP2: redis.asyncio has no
    client-side caching, but tracking's redirect mode needs only raw commands."""
    return Connection(host="127.0.0.1", port=port, protocol=2, socket_timeout=10)


async def command(connection: Connection, *args: str | bytes | int) -> Any:
    await connection.send_command(*args)
    return await connection.read_response()


@contextlib.asynccontextmanager
async def listening(port: int, *channels: str) -> AsyncIterator[Listener]:
    """A raw RESP2 connection subscribed to `channels`: a redirect target for tracking."""
    connection = raw(port)
    listener = Listener(int(await command(connection, "CLIENT", "ID")))
    await connection.send_command("SUBSCRIBE", *channels)
    for _ in channels:
        await connection.read_response()
    try:
        async with reading(read_raw(connection, listener)):
            yield listener
    finally:
        await connection.disconnect()


@contextlib.asynccontextmanager
async def subscribed(port: int, channel: str) -> AsyncIterator[Listener]:
    """A redis.asyncio PubSub on `channel`, as our replicas listen (client defaults: RESP3)."""
    client = Redis(port=port)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)  # the confirmation, before anything is timed
    listener = Listener(0)
    try:
        async with reading(read_pubsub(pubsub, listener)):
            yield listener
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


@contextlib.asynccontextmanager
async def tracked(port: int, listener: Listener, *options: str) -> AsyncIterator[Connection]:
    """A reading connection whose tracked keys are announced to `listener`."""
    connection = raw(port)
    await command(connection, "CLIENT", "TRACKING", "ON", "REDIRECT", listener.client_id, *options)
    try:
        yield connection
    finally:
        await connection.disconnect()


@contextlib.asynccontextmanager
async def tracking(port: int, *options: str) -> AsyncIterator[tuple[Listener, Connection]]:
    """A redirect listener and one reading connection tracked into it."""
    async with (
        listening(port, TRACKING_CHANNEL) as listener,
        tracked(port, listener, *options) as reader,
    ):
        yield listener, reader


def waited(heard: Heard | None, sent: float, expected: bytes) -> float:
    """Seconds from `sent` until `heard`, which must name exactly `expected`."""
    if heard is None or heard.keys != [expected]:
        raise RuntimeError(f"expected a message naming {expected!r}, heard {heard}")
    return heard.at - sent


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank: the value at least `fraction` of the samples do not exceed."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def runs(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


# --- 1. invalidation delay -------------------------------------------------------------------


async def delay_ours(port: int, writer: Redis, targets: list[str], pubsub: bool) -> list[float]:
    """EVALSHA of INVALIDATE until the run id is heard: by a redis.asyncio PubSub (as the
    replicas listen), or by a raw RESP2 connection (as tracking's listener is read here)."""
    invalidate = writer.register_script(INVALIDATE)
    seconds = []
    source = subscribed if pubsub else listening
    async with source(port, INVALIDATED_CHANNEL) as listener:
        for run in targets:
            key = generation_redis_key(run)
            sent = time.perf_counter()
            await invalidate(keys=[key], args=[KEEP_MS, INVALIDATED_CHANNEL, run])
            seconds.append(waited(await listener.next(), sent, run.encode()))
    return seconds


async def delay_tracking(
    port: int, writer: Redis, targets: list[str], *options: str
) -> list[float]:
    """A generation bump until the redirect listener hears of it; default mode re-reads first."""
    bump = writer.register_script(BUMP_ONLY)
    seconds = []
    async with tracking(port, *options) as (listener, reader):
        for run in targets:
            key = generation_redis_key(run)
            if not options:
                await command(reader, "GET", key)  # default mode tracks only what was read
            sent = time.perf_counter()
            await bump(keys=[key], args=[KEEP_MS])
            seconds.append(waited(await listener.next(), sent, key.encode()))
    return seconds


async def measure_delays(port: int, writes: int) -> dict[str, list[float]]:
    writer = Redis(port=port)
    targets = runs(100)
    per_round = writes // ROUNDS
    found: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_number in range(ROUNDS):
        for mode in in_turns(MODES, round_number):
            chosen = [targets[i % len(targets)] for i in range(per_round)]
            if mode in ("ours", "ours-raw"):
                found[mode] += await delay_ours(port, writer, chosen, pubsub=mode == "ours")
            elif mode == "tracking":
                found[mode] += await delay_tracking(port, writer, chosen)
            else:
                found[mode] += await delay_tracking(
                    port, writer, chosen, "BCAST", "PREFIX", KEY_PREFIX
                )
    await writer.aclose()
    return found


# --- 2. what tracking costs the server -------------------------------------------------------


def entry_keys(count: int) -> list[str]:
    return [entry_redis_key(EntryKey(run, f"run:{SCOPE}")) for run in runs(count)]


async def fill(writer: Redis, keys: Sequence[str], px: int | None = None) -> None:
    for start in range(0, len(keys), BATCH):
        async with writer.pipeline(transaction=False) as pipe:
            for key in keys[start : start + BATCH]:
                pipe.set(key, VALUE, px=px)
            await pipe.execute()


async def read_all(reader: Connection, keys: Sequence[str]) -> None:
    """GET every key, pipelined in batches (one tracked read each)."""
    for start in range(0, len(keys), BATCH):
        batch = keys[start : start + BATCH]
        await reader.send_packed_command(reader.pack_commands(("GET", key) for key in batch))
        for _ in batch:
            await reader.read_response()


@dataclass(frozen=True, slots=True)
class Table:
    """The server's tracking table (INFO stats) and used_memory at one moment."""

    keys: int
    items: int
    used_memory: int


async def table(client: Redis) -> Table:
    stats = await client.info("stats")
    memory = await client.info("memory")
    return Table(stats["tracking_total_keys"], stats["tracking_total_items"], memory["used_memory"])


@dataclass(frozen=True, slots=True)
class Cost:
    """Table readings for N entries: stored, read by one tracked reader, by two, and after
    both disconnected (the server drops a key's entry only when the key changes)."""

    size: int
    stored: Table
    one_reader: Table
    two_readers: Table
    after_disconnect: Table


async def tracking_cost(port: int, client: Redis, size: int) -> Cost:
    """N distinct 2 KB entries read by one tracked reader, then by a second."""
    await client.flushall()
    keys = entry_keys(size)
    await fill(client, keys)
    stored = await table(client)
    async with listening(port, TRACKING_CHANNEL) as listener:
        async with tracked(port, listener) as first:
            await read_all(first, keys)
            one = await table(client)
            async with tracked(port, listener) as second:
                await read_all(second, keys)
                two = await table(client)
        await asyncio.sleep(0.2)  # the server frees the readers
        gone = await table(client)
    return Cost(size, stored, one, two, gone)


# --- 2b. what reaches a listener at all ------------------------------------------------------


async def heard_keys(listener: Listener, wanted: set[bytes]) -> int:
    """How many of `wanted` messages name (or name all keys) within HEAR_WITHIN."""
    missing = set(wanted)
    deadline = time.monotonic() + HEAR_WITHIN
    while missing and (left := deadline - time.monotonic()) > 0:
        heard = await listener.next(left)
        if heard is not None:
            missing -= missing if heard.keys is None else set(heard.keys)
    return len(wanted) - len(missing)


async def heard_key(listener: Listener, key: str) -> bool:
    return await heard_keys(listener, {key.encode()}) == 1


async def hears_flushall(port: int, client: Redis, options: Sequence[str]) -> bool:
    key = entry_keys(1)[0]
    await client.set(key, VALUE)
    async with tracking(port, *options) as (listener, reader):
        await command(reader, "GET", key)
        await client.flushall()
        heard = await listener.next()
    return heard is not None and heard.keys is None


async def hears_expiry(port: int, client: Redis, options: Sequence[str]) -> bool:
    """A key read, then left to expire with nobody touching it (the server's active expiry)."""
    key = entry_keys(1)[0]
    async with tracking(port, *options) as (listener, reader):
        await client.set(key, VALUE, px=100)
        await command(reader, "GET", key)
        return await heard_key(listener, key)


async def hears_eviction(port: int, client: Redis, options: Sequence[str]) -> str:
    """200 keys read, then pushed out by maxmemory (allkeys-lru) with 4 MB of new keys: how
    many of the tracked keys that went were announced."""
    await client.flushall()
    keys = entry_keys(200)
    await fill(client, keys)
    used = (await client.info("memory"))["used_memory"]
    async with tracking(port, *options) as (listener, reader):
        await read_all(reader, keys)
        await client.config_set("maxmemory-policy", "allkeys-lru")
        await client.config_set("maxmemory", used + 1_000_000)
        try:
            await fill(client, [f"filler:{i}" for i in range(2000)])
        finally:
            await client.config_set("maxmemory", 0)
        gone = {key.encode() for key in keys if not await client.exists(key)}
        announced = await heard_keys(listener, gone)
    await client.flushall()
    return f"{yes(bool(gone) and announced == len(gone))} ({announced} of {len(gone)} evicted)"


async def hears_after_relisten(port: int, client: Redis, options: Sequence[str]) -> bool:
    """The redirect listener drops and a new one subscribes, as a reconnecting replica's would;
    the reader keeps its tracking (it redirects to the old id). Does a write reach anyone?"""
    key = entry_keys(1)[0]
    await client.set(key, VALUE)
    reader = raw(port)
    try:
        async with listening(port, TRACKING_CHANNEL) as old:
            await command(reader, "CLIENT", "TRACKING", "ON", "REDIRECT", old.client_id, *options)
            await command(reader, "GET", key)
        async with listening(port, TRACKING_CHANNEL) as new:
            await client.set(key, b"changed")
            return await heard_key(new, key)
    finally:
        await reader.disconnect()


async def observations(port: int, client: Redis) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for name, options in (("tracking", ()), ("bcast", ("BCAST", "PREFIX", KEY_PREFIX))):
        evicted = await hears_eviction(port, client, options)
        found[name] = {
            "FLUSHALL": yes(await hears_flushall(port, client, options)),
            "expiry": yes(await hears_expiry(port, client, options)),
            "eviction": evicted,
            "new listener": yes(await hears_after_relisten(port, client, options)),
        }
    return found


def yes(value: bool) -> str:
    return "yes" if value else "no"


# --- 3. BCAST traffic per cold miss ----------------------------------------------------------


@dataclass
class Traffic:
    messages: int = 0
    keys: int = 0
    payload_bytes: int = 0  # the key names the messages carry (framing not counted)
    ours: int = 0  # messages on our own channels over the same misses


async def drain_until(listener: Listener, marker: bytes, traffic: Traffic) -> None:
    """Count what arrives until the marker's message: BCAST sends in write order."""
    while True:
        heard = await listener.next()
        if heard is None or heard.keys is None:
            raise RuntimeError(f"the marker never arrived: {heard}")
        named = [key for key in heard.keys if key != marker]
        if named:
            traffic.messages += 1
            traffic.keys += len(named)
            traffic.payload_bytes += sum(len(key) for key in named)
        if marker in heard.keys:
            return


async def cold_miss_plain(client: Redis, key: EntryKey) -> None:
    lock = lock_redis_key(key)
    await client.set(lock, "token", nx=True, px=LEASE_MS)
    await client.set(entry_redis_key(key), VALUE, px=KEEP_MS)
    await client.delete(lock)


async def cold_miss_scripts(client: Redis, key: EntryKey) -> None:
    """The store's own fill: BEGIN_FILL takes the lock, END_FILL stores and releases it."""
    lock, wait = lock_redis_key(key), wait_redis_key(key)
    entry = entry_redis_key(key)
    await client.eval(BEGIN_FILL, 4, lock, wait, generation_redis_key(key.run_id), entry,
                      "token", LEASE_MS)  # fmt: skip
    await client.eval(END_FILL, 3, entry, lock, wait, VALUE, KEEP_MS, "token", FILLED_CHANNEL)


async def bcast_traffic(port: int, client: Redis, misses: int, scripted: bool) -> Traffic:
    traffic = Traffic()
    async with (
        listening(port, TRACKING_CHANNEL) as listener,
        listening(port, FILLED_CHANNEL, INVALIDATED_CHANNEL) as ours,
        tracked(port, listener, "BCAST", "PREFIX", KEY_PREFIX),
    ):
        for index, run in enumerate(runs(misses)):
            key = EntryKey(run, f"run:{SCOPE}")
            await (cold_miss_scripts if scripted else cold_miss_plain)(client, key)
            marker = f"{KEY_PREFIX}marker:{index}"
            await client.set(marker, 1)
            await drain_until(listener, marker.encode(), traffic)
        await client.publish(INVALIDATED_CHANNEL, "end")
        while (heard := await ours.next()) is not None and heard.keys != [b"end"]:
            traffic.ours += 1
    return traffic


# --- the report ------------------------------------------------------------------------------


def print_delays(found: dict[str, list[float]]) -> None:
    labels = {
        "ours": "ours: INVALIDATE -> asyncio PubSub",
        "ours-raw": "ours: INVALIDATE -> raw RESP2 conn",
        "tracking": "TRACKING default (REDIRECT)",
        "bcast": "TRACKING BCAST PREFIX lcp:1:",
    }
    print(f"\n1. invalidation delay, write sent -> listener heard (us), {ROUNDS} rounds in turns")
    print(f"   {'mode':<36} {'writes':>7} {'median':>8} {'p99':>8} {'max':>8}")
    for mode in MODES:
        seconds = found[mode]
        us = [s * 1e6 for s in seconds]
        print(f"   {labels[mode]:<36} {len(us):>7} {statistics.median(us):>8.0f} "
              f"{percentile(us, 0.99):>8.0f} {max(us):>8.0f}")  # fmt: skip


def print_costs(costs: Iterable[Cost], table_max: str) -> None:
    print(f"\n2. tracking table after N tracked reads of distinct 2 KB entries "
          f"(tracking-table-max-keys {table_max})")  # fmt: skip
    print(
        f"   {'N':>7} {'readers':>7} {'keys':>8} {'items':>8} {'+used_memory':>13} {'per item':>9}"
    )
    for cost in costs:
        for readers, seen in ((1, cost.one_reader), (2, cost.two_readers)):
            grown = seen.used_memory - cost.stored.used_memory
            print(f"   {cost.size:>7} {readers:>7} {seen.keys:>8} {seen.items:>8} "
                  f"{grown / 2**20:>10.2f} MiB {grown / seen.items:>7.0f} B")  # fmt: skip
        gone = cost.after_disconnect
        print(f"   {cost.size:>7} {'closed':>7} {gone.keys:>8} {gone.items:>8} "
              f"{(gone.used_memory - cost.stored.used_memory) / 2**20:>10.2f} MiB  "
              "(both readers disconnected)")  # fmt: skip


def print_observations(found: dict[str, dict[str, str]]) -> None:
    print(f"\n   does a listener hear of it? (within {HEAR_WITHIN:.0f} s)")
    print(f"   {'event':<14} {'default':<26} {'BCAST':<26}")
    for event in found["tracking"]:
        print(f"   {event:<14} {found['tracking'][event]:<26} {found['bcast'][event]:<26}")
    print("   (new listener: the redirect listener reconnected, readers not re-registered)")


def print_traffic(misses: int, plain: Traffic, scripted: Traffic) -> None:
    print(f"\n3. BCAST PREFIX lcp:1: messages per cold miss, to every listening replica "
          f"({misses} misses)")  # fmt: skip
    print(f"   {'cold miss as':<40} {'msgs':>6} {'keys':>6} {'key bytes':>10} {'ours':>6}")
    for label, traffic in (("SET lock NX PX, SET entry, DEL lock", plain),
                           ("BEGIN_FILL + END_FILL scripts", scripted)):  # fmt: skip
        print(f"   {label:<40} {traffic.messages / misses:>6.2f} {traffic.keys / misses:>6.2f} "
              f"{traffic.payload_bytes / misses:>10.0f} {traffic.ours / misses:>6.2f}")  # fmt: skip
    print("   (ours: messages on lcp:1:filled and lcp:1:invalidated over the same misses)")


async def main(writes: int, sizes: list[int], misses: int) -> None:
    with RedisServer() as server:
        client = Redis(port=server.port)
        version = (await client.info("server"))["redis_version"]
        print(f"redis-server {version} on loopback, redis-py asyncio, RESP2 redirect mode")
        started = time.monotonic()
        print_delays(await measure_delays(server.port, writes))
        limit = await client.config_get("tracking-table-max-keys")
        table_max = str(limit["tracking-table-max-keys"])
        print_costs([await tracking_cost(server.port, client, n) for n in sizes], table_max)
        print_observations(await observations(server.port, client))
        plain = await bcast_traffic(server.port, client, misses, scripted=False)
        scripted = await bcast_traffic(server.port, client, misses, scripted=True)
        print_traffic(misses, plain, scripted)
        print(f"\nran {time.monotonic() - started:.1f} s")
        await client.aclose()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--writes", type=int, default=2000, help="per mode, at least 1000")
    parser.add_argument("--sizes", default="10000,100000", help="tracked reads, comma-separated")
    parser.add_argument("--misses", type=int, default=500, help="cold misses under BCAST")
    return parser.parse_args()


if __name__ == "__main__":
    require("redis-server")
    options = parse()
    sizes = [int(size) for size in options.sizes.split(",")]
    uvloop.run(main(max(1000, options.writes), sizes, options.misses))
