"""What a lookup costs now that it may take the fill lock: RedisStore.lookup (MGET) against
RedisStore.lookup_or_lead (the LOOKUP_OR_LEAD script) on a hit, side by side, and the cold miss
before and after (lookup + lead_fill + end_fill against lookup_or_lead + end_fill).

One redis-server on loopback, one RedisStore as the app builds it (pooled connections, uvloop).
A hit reads one stored entry of `--body` bytes (as codec.encode stores it); each round times
`--calls` sequential calls, then the same at `--concurrency` at once, the systems in turns.
Prints the median over rounds of microseconds per call (wall clock, and the client's CPU),
Redis's own usec_per_call (INFO commandstats: EVALSHA, its MGET included, against MGET), and the
commands (each a round trip) a cold miss sends, as a counting client saw them.
Loopback only; bounded in calls; the server it starts is stopped by PID.

    python -m benchmarks.lookup_cost [--rounds 9] [--calls 5000] [--concurrency 32] [--body 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from redis.asyncio import Redis

from benchmarks.harness import median
from proxy.core.model import Entry, EntryKey
from proxy.store.connection import connect
from proxy.store.redis import RedisStore
from tests.servers import RedisServer

Call = Callable[[EntryKey], Awaitable[object]]


def body(size: int) -> bytes:
    """Run-like JSON that deflates about as well as Lunary's (half of it random hex)."""
    chunk = b'{"id":"%s","status":"success","input":"%s"},'
    out = b"["
    while len(out) < size:
        out += chunk % (uuid.uuid4().hex.encode(), os.urandom(16).hex().encode())
    return out[: size - 1] + b"]"


async def per_call(call: Call, key: EntryKey, calls: int, concurrency: int) -> tuple[float, float]:
    """Microseconds per call, wall clock and this process's CPU: `calls` in all, `concurrency`
    at a time."""
    each = calls // concurrency

    async def worker() -> None:
        for _ in range(each):
            await call(key)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = each * concurrency
    wall = (time.perf_counter() - started) / done * 1e6
    return wall, (time.process_time() - cpu) / done * 1e6


async def measure(
    store: RedisStore, args: argparse.Namespace
) -> dict[str, list[tuple[float, float]]]:
    key = EntryKey(str(uuid.uuid4()), "run:scope")
    now = time.time()
    await store.save(key, Entry(200, "application/json", body(args.body), '"e"', now, 3600, 60))

    async def mget(key: EntryKey) -> object:
        return await store.lookup(key)

    async def script(key: EntryKey) -> object:
        return await store.lookup_or_lead(key, "bench-token", 5.0)

    systems: dict[str, Call] = {"lookup (MGET)": mget, "lookup_or_lead (script)": script}
    for call in systems.values():  # load the script, open the connections
        await per_call(call, key, 256, args.concurrency)
    results: dict[str, list[tuple[float, float]]] = {}
    for round_number in range(args.rounds):
        names = list(systems)
        if round_number % 2:
            names.reverse()
        for name in names:
            for concurrency in (1, args.concurrency):
                label = f"{name}, {concurrency} at once"
                value = await per_call(systems[name], key, args.calls, concurrency)
                results.setdefault(label, []).append(value)
    return results


async def miss_round_trips(store: RedisStore, sent: list[int]) -> tuple[int, int]:
    """Commands a cold miss sends Redis (each its own round trip), before (lookup, lead_fill,
    end_fill) and now (lookup_or_lead, end_fill), as the counting client saw them."""
    entry = Entry(200, "application/json", b"{}", '"e"', time.time(), 60, 0)
    counts = []
    for now in (False, False, True, True):  # the first of each loads its scripts: not counted
        key = EntryKey(str(uuid.uuid4()), "run:scope")
        sent.clear()
        if now:
            await store.lookup_or_lead(key, "t", 5.0)
        else:
            await store.lookup(key)
            await store.lead_fill(key, "t", 5.0)
        await store.end_fill(key, "t", entry)
        counts.append(len(sent))
    return counts[1], counts[3]


def counting(client: Redis) -> list[int]:
    """Count every command the client sends (scripts included: Script calls evalsha on it)."""
    sent: list[int] = []
    execute: Callable[..., Awaitable[Any]] = client.execute_command

    async def counted(*args: Any, **options: Any) -> Any:
        sent.append(1)
        return await execute(*args, **options)

    client.execute_command = counted  # type: ignore[method-assign]
    return sent


async def run(args: argparse.Namespace) -> None:
    with RedisServer() as server:
        client = connect(server.url, cluster=False, timeout=1.0)
        assert isinstance(client, Redis)
        sent = counting(client)
        store = RedisStore(client, timeout=1.0)
        try:
            results = await measure(store, args)
            server.client().config_resetstat()
            key = EntryKey(str(uuid.uuid4()), "run:scope")
            await store.save(key, Entry(200, "application/json", body(args.body), '"e"',
                                        time.time(), 3600, 60))  # fmt: skip
            for _ in range(args.calls):
                await store.lookup(key)
                await store.lookup_or_lead(key, "bench-token", 5.0)
            stats = server.client().info("commandstats")
            before, after = await miss_round_trips(store, sent)
        finally:
            await store.close()
    print(f"hit: {args.body}-byte body, median of {args.rounds} rounds of {args.calls} calls")
    for label, values in results.items():
        wall, cpu = median([v[0] for v in values]), median([v[1] for v in values])
        print(f"  {label:<34} {wall:7.1f} us/call wall, {cpu:6.1f} us client CPU")
    for command, name in (("cmdstat_mget", "MGET"), ("cmdstat_evalsha", "EVALSHA")):
        print(f"  Redis usec_per_call, {name:<27} {stats[command]['usec_per_call']:7.2f}")
    print(f"cold miss round trips: before {before}, now {after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--body", type=int, default=2048)
    args = parser.parse_args()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
