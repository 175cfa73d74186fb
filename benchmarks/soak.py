"""Soak: steady mixed load on 4 proxy processes for 10 minutes while Redis, its pub/sub
connections and the upstream fail.

A short benchmark shows a path is fast; a soak shows it stays right and stays the same size. The
proxies share one Redis in front of benchmarks/origin.py in marker mode (every body names the
credential that read it, and carries the run's write version), with their in-process tier on
(`--near false` turns it off: PROXY_NEAR_CACHE), and take a steady, moderate load: a fixed
request rate from a bounded set of clients, the isolation benchmark's mix of 50 credentials,
GET/HEAD on both routes, some no-cache, writes and admin purges, each sent through any of the
proxies, so every replica takes writes and reads of what others wrote. Meanwhile Redis is killed
and restarted every 2 minutes (empty afterwards), the upstream answers 503 to everything for
10 s every 3 minutes (offset by half a period, so the two never coincide), and every 45 s (from
half a period in) `CLIENT KILL TYPE pubsub` cuts every proxy's invalidation listener, whose
tier must then be bypassed until the listener is back, and emptied.

Prints requests, client errors by class (split by whether they fell in an upstream-failure, a
Redis-restart or a listener-kill window, or in steady state), wrong bodies (leaks and wrong
answers: must be 0), stale reads (GETs sent after a write was acknowledged that got an older
version) inside issue 16's 50 ms window after the acknowledgement and outside it (must be 0),
by X-Cache and by phase, writes per proxy, upstream calls per (key, scope, TTL window) as the
origin saw them (coalescing and stale-while-revalidate mean ~1 per window for a stored answer,
whatever the number of proxies), each proxy's in-process tier counters, and each proxy's RSS
after warm-up, along the way, and at the end. Exits 1 on any wrong body or any stale read outside
the window. Loopback only; bounded in time; everything it starts is stopped by PID.

    python -m benchmarks.soak [--seconds 600] [--proxies 4] [--rate 200] [--cache-ttl 10]
        [--listener-every 45] [--near true|false] [--window-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx
import orjson
import uvloop

from benchmarks.harness import Service, metric_samples, require, rss_kib
from benchmarks.isolation import (
    STALE_WINDOW,
    Checker,
    Credential,
    Driver,
    Mix,
    Op,
    Read,
    Tally,
    Workload,
    World,
    counts,
    log_problems,
    make_world,
    marker_system,
    proxy_report,
    tally_lines,
)
from benchmarks.origin import Fill
from benchmarks.rawhttp import Answer
from tests.prometheus import total
from tests.servers import RedisServer

Key = tuple[str, str, str]  # run, route, reader marker: one (key, scope) of the proxy's cache
# After its pub/sub connection is cut, a proxy's listener reconnects within a second (its
# back-off starts at 0.1 s) and its heartbeat calls it dead after 1 s of silence: the span after
# a kill that counts as the listener-kill phase.
LISTENER_SPAN = 1.0
PHASES = ("steady", "upstream failing", "redis restart", "listener kill")
NEAR_RESULTS = ("hit", "miss", "unconfirmed", "bypass")
NEAR_CAUSES = ("invalidated", "reset", "changed")


@dataclass
class Timeline:
    """Wall-clock times of what the soak did to the system, and of cache-bypassing requests."""

    started: float
    window: float  # seconds: PROXY_CACHE_TTL
    world: World  # what Lunary would answer each read
    redis_down: list[tuple[float, float]] = field(default_factory=list)
    upstream_failing: list[tuple[float, float]] = field(default_factory=list)
    listener_killed: list[tuple[float, float]] = field(default_factory=list)
    # TTL windows in which a run was written or purged, or a key read with no-cache
    touched_runs: set[tuple[str, int]] = field(default_factory=set)
    refreshed_keys: set[tuple[Key, int]] = field(default_factory=set)
    # reads answered in each phase, by what Lunary would say, status and X-Cache
    answers: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def index(self, at: float) -> int:
        return int((at - self.started) // self.window)

    def saw(self, at: float, op: Op) -> None:
        if isinstance(op, Read):
            if op.no_cache:
                self.refreshed_keys.add(((op.run, op.route, op.credential.marker), self.index(at)))
        else:
            self.touched_runs.add((op.run, self.index(at)))

    def answered(self, at: float, read: Read, answer: Answer) -> None:
        expected = self.world.expect(read.credential, read.run, read.route).value
        outcome = f"{expected} -> {answer.status} {answer.headers.get('x-cache', '-')}"
        self.answers[self.phase(at)][outcome] += 1

    def phase(self, at: float) -> str:
        """Which disturbance a moment belongs to: it, one second after, or steady state."""
        if any(start <= at <= end + 1 for start, end in self.upstream_failing):
            return "upstream failing"
        if any(start <= at <= end + 1 for start, end in self.redis_down):
            return "redis restart"
        if any(start <= at <= end + 1 for start, end in self.listener_killed):
            return "listener kill"
        return "steady"

    def windows_of(self, spans: list[tuple[float, float]]) -> set[int]:
        """The TTL windows a disturbance touched: during it, and the one after its end."""
        windows: set[int] = set()
        for start, end in spans:
            windows.update(range(self.index(start), self.index(end + self.window) + 1))
        return windows


def schedule(args: argparse.Namespace) -> list[tuple[int, str]]:
    """(second, disturbance) pairs: Redis restarts from one period in, upstream failures and
    listener kills from half a period in (so they fall between restarts); 0 turns kills off."""
    events = [(at, "redis") for at in range(args.redis_every, args.seconds, args.redis_every)]
    events += [(at, "fail") for at in range(args.fail_every // 2, args.seconds, args.fail_every)]
    if args.listener_every:
        first = args.listener_every // 2
        events += [(at, "listener") for at in range(first, args.seconds, args.listener_every)]
    return sorted(events)


def kill_listeners(redis: RedisServer) -> int:
    """Cut every pub/sub connection (each proxy's invalidation listener among them)."""
    client = redis.client()
    try:
        return int(client.client_kill_filter(_type="pubsub"))
    finally:
        client.close()


async def disturb(
    what: str, redis: RedisServer, origin_url: str, timeline: Timeline, args: argparse.Namespace
) -> str:
    """Do one disturbance, record its span on the timeline, and say what was done."""
    began = time.time()
    if what == "redis":
        await asyncio.to_thread(redis.stop)
        await asyncio.sleep(args.redis_down)
        await asyncio.to_thread(redis.start)
        timeline.redis_down.append((began, time.time()))
        return f"redis killed, restarted after {time.time() - began:.1f} s"
    if what == "listener":
        killed = await asyncio.to_thread(kill_listeners, redis)
        timeline.listener_killed.append((began, time.time() + LISTENER_SPAN))
        return f"pub/sub connections killed: {killed}"
    url = f"{origin_url}/__fail?seconds={args.fail_for}"
    await asyncio.to_thread(httpx.get, url, timeout=10)
    timeline.upstream_failing.append((began, began + args.fail_for))
    return f"upstream failing for {args.fail_for} s"


async def chaos(
    redis: RedisServer, origin_url: str, timeline: Timeline, args: argparse.Namespace
) -> None:
    """Kill and restart Redis every `--redis-every` s; make the upstream fail every
    `--fail-every` s for `--fail-for` s; kill the pub/sub listeners every `--listener-every` s;
    until the end of the load. One at a time: Redis is up whenever listeners are killed."""
    clock = time.monotonic() - (time.time() - timeline.started)
    for offset, what in schedule(args):
        await asyncio.sleep(max(0.0, clock + offset - time.monotonic()))
        began = time.time()
        note = await disturb(what, redis, origin_url, timeline, args)
        print(f"  t={began - timeline.started:5.0f} s  {note}", flush=True)


@dataclass
class Memory:
    """RSS of each proxy process (KiB), sampled every `every` seconds from the warm-up on."""

    pids: list[int]
    samples: list[tuple[float, list[int]]] = field(default_factory=list)

    def take(self, at: float) -> None:
        self.samples.append((at, [rss_kib(pid) for pid in self.pids]))


async def watch(memory: Memory, tally: Tally, timeline: Timeline, args: argparse.Namespace) -> None:
    """Memory from the end of warm-up on, and one progress line a minute."""
    await asyncio.sleep(args.warmup)
    next_report = 60.0
    while True:
        now = time.time()
        memory.take(now - timeline.started)
        if now - timeline.started >= next_report:
            next_report += 60
            rss = " ".join(f"{kib / 1024:.0f}" for kib in memory.samples[-1][1])
            print(f"  t={now - timeline.started:5.0f} s  requests {tally.requests}, errors "
                  f"{sum(tally.errors.values())}, wrong bodies {tally.leaks + tally.wrong}, "
                  f"stale reads outside the window {sum(tally.stale_outside.values())}, "
                  f"proxy RSS MiB {rss}", flush=True)  # fmt: skip
        await asyncio.sleep(args.memory_every)


async def soak(
    urls: list[str],
    pids: list[int],
    redis: RedisServer,
    origin_url: str,
    world: World,
    args: argparse.Namespace,
) -> tuple[Tally, Timeline, Memory, float]:
    rng = random.Random(args.seed)
    tally = Tally()
    timeline = Timeline(started=time.time(), window=args.cache_ttl, world=world)
    mix = Mix(writes=0.005, purges=0.002, no_cache=0.02, hot=0.3)
    checker = Checker(world, args.body_bytes, args.window_ms / 1000)
    workload = Workload(world, rng, mix)
    driver = Driver(urls, workload, checker, tally, rng, timeline.saw, timeline.answered)
    memory = Memory(pids)
    background = [
        asyncio.create_task(chaos(redis, origin_url, timeline, args)),
        asyncio.create_task(watch(memory, tally, timeline, args)),
    ]
    started = time.monotonic()
    try:
        await driver.run(
            total=sys.maxsize,
            concurrency=args.concurrency,
            deadline=started + args.seconds,
            rate=args.rate,
        )
    finally:
        for task in background:
            task.cancel()
        # a failed chaos or watch task must fail the run: else it stops disturbing unnoticed
        for result in await asyncio.gather(*background, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
    memory.take(time.time() - timeline.started)
    if not redis.running:  # cancelled mid-restart
        redis.start()
    return tally, timeline, memory, time.monotonic() - started


# -- reports -----------------------------------------------------------------------------------


def upstream_calls(fills: list[Fill], world: World, timeline: Timeline) -> list[str]:
    """Upstream calls per (key, scope, TTL window), by the kind of answer the key gets, for
    undisturbed windows and for each kind of disturbance."""
    by_marker: dict[str, Credential] = {c.marker: c for c in world.credentials}
    calls: Counter[tuple[Key, int]] = Counter()
    for at, run, route, reader, _status in fills:
        calls[(run, route, reader), timeline.index(at)] += 1
    failing = timeline.windows_of(timeline.upstream_failing)
    restarting = timeline.windows_of(timeline.redis_down)

    def kind(key: Key) -> str:
        credential = by_marker.get(key[2])
        return "other" if credential is None else world.expect(credential, key[0], key[1]).value

    def selection(key: Key, window: int) -> str:
        if window in failing:
            return "upstream failing"
        if window in restarting:
            return "redis restart"
        if (key[0], window) in timeline.touched_runs or (key, window) in timeline.refreshed_keys:
            return "write/purge/no-cache"
        return "undisturbed"

    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for (key, window), count in calls.items():
        chosen = selection(key, window)
        for name in (chosen, "all windows"):
            groups[name, kind(key)].append(count)
            groups[name, "every key"].append(count)
    notes = {
        "data": "(stored for the TTL, then stale-while-revalidate)",
        "empty": "([]: fresh for PROXY_ACTIVE_RUN_TTL, 2 s)",
        "not_found": "(404: fresh for PROXY_NEGATIVE_TTL)",
        "unauthorized": "(401: never stored; only requests in flight share)",
    }
    lines = [
        f"upstream calls per (key, scope, {timeline.window:g} s window) over windows with any "
        "call, all proxies together; windows are classed by what touched them first: an "
        "upstream failure or Redis restart in or just before the window, else a write/purge of "
        "the run or a no-cache read of the key in it, else undisturbed"
    ]
    for chosen in (
        "undisturbed",
        "write/purge/no-cache",
        "redis restart",
        "upstream failing",
        "all windows",
    ):
        for name in ("every key", "data", "empty", "not_found", "unauthorized"):
            values = groups.get((chosen, name), [])
            if not values:
                continue
            spread = Counter(min(v, 4) for v in values)
            note = notes.get(name, "") if chosen == "undisturbed" else ""
            lines.append(
                f"  {chosen:>20} {name:>12}: {len(values):6d} key-windows, mean "
                f"{sum(values) / len(values):5.2f}, max {max(values):3d} (1: {spread[1]}, "
                f"2: {spread[2]}, 3: {spread[3]}, 4+: {spread[4]}) {note}"
            )
    return lines


def answer_lines(timeline: Timeline) -> list[str]:
    """Reads in each disturbance, by expected answer -> status and X-Cache."""
    return [f"reads while {phase:>16}: {counts(timeline.answers[phase])}" for phase in PHASES[1:]]


def stale_lines(tally: Tally, timeline: Timeline) -> list[str]:
    """Stale reads outside the window by the phase they were sent in; and the writes each
    proxy took, since every replica must take some for the count to mean anything."""
    by_phase = Counter(timeline.phase(stale.sent.wall) for stale in tally.stale_outside_reads)
    sent = ", ".join(f"{via} {n}" for via, n in sorted(tally.writes_via.items()))
    acked = ", ".join(f"{via} {n}" for via, n in sorted(tally.acks_via.items()))
    return [
        f"  outside, by phase   {counts(by_phase)}",
        f"writes per proxy      sent {sent or 'none'}; acknowledged with a new version "
        f"{acked or 'none'}",
    ]


def stale_examples(tally: Tally, timeline: Timeline) -> list[str]:
    """The first stale reads outside the window, with when and in which phase they were sent."""
    return [
        f"stale t={stale.sent.wall - timeline.started:.2f} s "
        f"({timeline.phase(stale.sent.wall)}): {stale.describe}"
        for stale in tally.stale_outside_reads[:20]
    ]


def tier_lines(proxies: list[Service]) -> list[str]:
    """Each proxy's in-process tier counters: how lookups were answered, why entries went."""
    lines = ["in-process tier (lunary_proxy_near_lookups_total by result; "
             "lunary_proxy_near_invalidations_total by cause):"]  # fmt: skip
    for index, proxy in enumerate(proxies):
        found = metric_samples(proxy.url)
        lookups = ", ".join(
            f"{result} {total(found, 'lunary_proxy_near_lookups_total', result=result):.0f}"
            for result in NEAR_RESULTS
        )
        drops = ", ".join(
            f"{cause} {total(found, 'lunary_proxy_near_invalidations_total', cause=cause):.0f}"
            for cause in NEAR_CAUSES
        )
        lines.append(f"  proxy {index} (pid {proxy.pid}): lookups {lookups}; invalidations {drops}")
    return lines


def memory_lines(memory: Memory) -> tuple[list[str], bool]:
    """Per process: RSS after warm-up, at the end, the largest seen and end/start."""
    first, last = memory.samples[0], memory.samples[-1]
    flat = True
    lines = [f"proxy RSS (MiB) after warm-up (t={first[0]:.0f} s) -> end (t={last[0]:.0f} s):"]
    for index, pid in enumerate(memory.pids):
        start, end = first[1][index], last[1][index]
        peak = max(sample[1][index] for sample in memory.samples)
        ratio = end / start
        flat = flat and ratio <= 1.10
        lines.append(
            f"  pid {pid}: {start / 1024:6.1f} -> {end / 1024:6.1f}  (max {peak / 1024:.1f}, "
            f"end/start {ratio:.3f})"
        )
    series = " | ".join(
        f"t={at:.0f}: " + " ".join(f"{kib / 1024:.0f}" for kib in rss)
        for at, rss in memory.samples[:: max(1, len(memory.samples) // 10)]
    )
    lines.append(f"  samples (MiB per process): {series}")
    return lines, flat


def error_lines(tally: Tally, timeline: Timeline) -> list[str]:
    by_phase: dict[str, Counter[str]] = defaultdict(Counter)
    for at, kind in tally.error_times:
        by_phase[timeline.phase(at)][kind] += 1
    return [
        f"client errors         {sum(tally.errors.values())} ({counts(tally.errors)})",
        *(f"  {phase:>16}: {counts(by_phase[phase])}" for phase in PHASES),
    ]


def log_summary(messages: list[str]) -> str:
    """Warning/error lines of the proxies, counted by their message."""
    kinds: Counter[str] = Counter()
    for line in messages:
        try:
            record = orjson.loads(line.split(": ", 1)[1])
            kinds[f"{record['level']}: {record['message']}"] += 1
        except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
            kinds[line[:120]] += 1
    return counts(kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--proxies", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200, help="requests per second, steady")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cache-ttl", type=int, default=10, help="PROXY_CACHE_TTL (the window)")
    parser.add_argument("--stale-ttl", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.03, help="origin latency, seconds")
    parser.add_argument("--body-bytes", type=int, default=2048)
    parser.add_argument("--redis-every", type=int, default=120)
    parser.add_argument("--redis-down", type=float, default=1.0, help="seconds Redis stays down")
    parser.add_argument("--fail-every", type=int, default=180)
    parser.add_argument("--fail-for", type=float, default=10)
    parser.add_argument(
        "--listener-every", type=int, default=45, help="seconds between pub/sub kills; 0: none"
    )
    parser.add_argument(
        "--near", choices=("true", "false"), default="true", help="PROXY_NEAR_CACHE"
    )
    parser.add_argument(
        "--window-ms",
        type=float,
        default=STALE_WINDOW * 1000,
        help="a stale read sent within this long after the write's acknowledgement is allowed",
    )
    parser.add_argument("--warmup", type=float, default=30, help="before the first RSS reading")
    parser.add_argument("--memory-every", type=float, default=15)
    parser.add_argument("--seed", type=int, default=20261102)
    args = parser.parse_args()
    if args.warmup >= args.seconds:
        parser.error("--warmup must be shorter than --seconds")
    require("redis-server")

    world = make_world(random.Random(args.seed))
    print(f"soak: {args.seconds} s, {args.proxies} proxies, {args.rate:g} requests/s from "
          f"{args.concurrency} clients, {world.describe()}; fresh {args.cache_ttl} s, stale "
          f"{args.stale_ttl} s, 404s {args.cache_ttl} s; origin latency "
          f"{args.latency * 1000:.0f} ms; Redis killed every {args.redis_every} s (down "
          f"{args.redis_down:g} s), upstream 503 for {args.fail_for:g} s every "
          f"{args.fail_every} s from t={args.fail_every // 2} s, pub/sub listeners killed "
          f"every {args.listener_every} s from t={args.listener_every // 2} s; in-process "
          f"tier {'on' if args.near == 'true' else 'off'}; stale window "
          f"{args.window_ms:g} ms", flush=True)  # fmt: skip
    with marker_system(
        world,
        args.proxies,
        latency=args.latency,
        body_bytes=args.body_bytes,
        cache_ttl=str(args.cache_ttl),
        stale_ttl=str(args.stale_ttl),
        negative_ttl=str(args.cache_ttl),
        near_cache=args.near,
    ) as system:
        proxies = system.proxies
        tally, timeline, memory, elapsed = uvloop.run(
            soak(
                [p.url for p in proxies],
                [p.pid for p in proxies],
                system.redis,
                system.origin.url,
                world,
                args,
            )
        )
        metric_lines, _ = proxy_report(proxies)
        tier = tier_lines(proxies)
        problems = log_problems(proxies)
        fills = system.fills()
        alive = [p.process.poll() is None for p in proxies]

    print(f"requests              {tally.requests} in {elapsed:.0f} s "
          f"({tally.requests / elapsed:.0f}/s; {counts(tally.by_kind)})")  # fmt: skip
    verdict = (
        f"wrong bodies          {tally.leaks + tally.wrong} "
        f"(leaks {tally.leaks}, wrong answers {tally.wrong})"
    )
    window = args.window_ms / 1000
    before_cache = stale_lines(tally, timeline) + error_lines(tally, timeline)
    for line in tally_lines(tally, [verdict], window, before_cache=before_cache):
        print(line)
    print(f"origin run reads      {len(fills)}")
    for line in upstream_calls(fills, world, timeline) + answer_lines(timeline):
        print(line)
    lines, flat = memory_lines(memory)
    for line in lines:
        print(line)
    for line in metric_lines + tier:
        print(line)
    print(f"proxies alive at the end: {sum(alive)}/{len(alive)}")
    print(f"proxy log warnings/errors: {len(problems)} ({log_summary(problems)})")
    for example in tally.examples + stale_examples(tally, timeline):
        print("  " + example)
    print(f"memory {'flat' if flat else 'NOT FLAT'} (end/start <= 1.10 for every process)")
    if tally.leaks or tally.wrong:
        print("FAIL: wrong bodies")
        sys.exit(1)
    if tally.stale_outside:
        print(f"FAIL: stale reads sent more than {args.window_ms:g} ms after the write")
        sys.exit(1)
    print("OK: no wrong body, no stale read outside the window")


if __name__ == "__main__":
    main()
