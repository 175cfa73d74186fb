"""Isolation under concurrency: no credential ever receives a body fetched with another.

The proxy keys entries by credential scope; this drives it the way that could go wrong. Fifty
credentials (in `Authorization: Bearer` and in `X-API-Key`; several per org, so they see the same
run ids; two public and two unknown keys, which Lunary answers 401) read runs at random through
2+ proxy processes sharing one Redis, in front of benchmarks/origin.py in marker mode: every body
it serves names the credential that read it (`reader`, a digest) and the run's write `version`.
Short TTLs, upstream latency and hot runs read in many scopes at once make hits, misses,
coalesced waits (in the process and across replicas) and stale serving happen all the time;
writes (PATCH through the proxy) and admin purges invalidate runs in between. Every answer is
checked against what the origin would say to that credential: a body for another reader, or data
for a run the credential may not see, is a leak; any other mismatch (a 404 or `[]` for a visible
run, a 401 for a good key) is a wrong answer. HEAD answers are checked by their ETag.

Writes go through every proxy, so a read through one replica just after a write through another
may still get the older version for a moment (the announcement has not arrived). A GET answered
with a version older than a write whose acknowledgement the client had *before sending it* is a
stale read, classed by how long after the first acknowledgement of a newer version it was sent:
inside `--window-ms` (issue 16's 50 ms, allowed) or outside it (a failure). Reads sent before
the acknowledgement arrived are never counted, whatever they return.

Prints requests, checked responses, leaks, wrong answers, stale reads inside and outside the
window (by X-Cache), answers by X-Cache and status, errors by class, duration, and the proxies'
own counters. Exits 1 on any leak, wrong answer or stale read outside the window, 2 if the run
did not exercise hits, misses, stale serving, coalesced waits and invalidations. Loopback only;
bounded in requests and time; everything it starts is stopped by PID.

    python -m benchmarks.isolation [--requests 100000] [--proxies 2] [--concurrency 64]
        [--window-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import itertools
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import httpx
import orjson
import uvloop

from benchmarks.harness import (
    Service,
    free_ports,
    metric_samples,
    origin_service,
    require,
    shared_proxy,
)
from benchmarks.origin import RUN_NOT_FOUND, Fill, marked_body, marker
from benchmarks.rawhttp import Answer, HttpConnection
from proxy.core.policy import make_etag
from proxy.ops.metrics import CACHE_RESULTS
from tests.prometheus import total
from tests.servers import RedisServer

ADMIN_TOKEN = "isolation-admin-token-0123456789"
REQUEST_TIMEOUT = 10.0


class Expect(Enum):
    """What the origin answers a credential for a run and route."""

    DATA = "data"  # 200, the run (or its family) with this credential's reader marker
    EMPTY = "empty"  # 200 [] (`/related` of a run the key may not see)
    NOT_FOUND = "not_found"  # 404 Run not found
    UNAUTHORIZED = "unauthorized"  # 401 (public or unknown key)


@dataclass(frozen=True, slots=True)
class Credential:
    key: str
    kind: str  # "private", "public" or "unknown"
    org: str | None  # private keys only
    header: str  # "Authorization" or "X-API-Key"

    @property
    def headers(self) -> dict[str, str]:
        if self.header == "Authorization":
            return {"Authorization": f"Bearer {self.key}"}
        return {"X-API-Key": self.key}

    @property
    def marker(self) -> str:
        return marker(self.key)


@dataclass
class World:
    """The credentials and runs both the origin and the checking client know."""

    credentials: list[Credential]
    runs: dict[str, str]  # run -> org
    absent: list[str]  # run ids nobody has
    by_org: dict[str, list[str]] = field(init=False)
    keys_of: dict[str, list[Credential]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_org, self.keys_of = {}, {}
        for run, org in self.runs.items():
            self.by_org.setdefault(org, []).append(run)
        for credential in self.credentials:
            if credential.org is not None:
                self.keys_of.setdefault(credential.org, []).append(credential)

    def expect(self, credential: Credential, run: str, route: str) -> Expect:
        if credential.org is None:
            return Expect.UNAUTHORIZED
        if self.runs.get(run) == credential.org:
            return Expect.DATA
        return Expect.EMPTY if route == "related" else Expect.NOT_FOUND

    def write_origin_file(self, path: Path) -> None:
        keys: dict[str, str | None] = {
            c.key: c.org for c in self.credentials if c.kind != "unknown"
        }
        path.write_bytes(orjson.dumps({"keys": keys, "runs": self.runs}))

    def describe(self) -> str:
        headers = Counter(c.header for c in self.credentials)
        kinds = Counter(c.kind for c in self.credentials)
        shared = sum(1 for keys in self.keys_of.values() if len(keys) > 1)
        mixed = sum(1 for keys in self.keys_of.values() if len({c.header for c in keys}) > 1)
        return (
            f"{len(self.credentials)} credentials ({headers['Authorization']} Authorization, "
            f"{headers['X-API-Key']} X-API-Key; {kinds['private']} private keys in "
            f"{len(self.keys_of)} orgs, {shared} orgs read by 2+ keys ({mixed} by both headers); "
            f"{kinds['public']} public, {kinds['unknown']} unknown), {len(self.runs)} runs + "
            f"{len(self.absent)} absent ids"
        )


def make_world(
    rng: random.Random,
    *,
    credentials: int = 50,
    orgs: int = 20,
    runs_per_org: int = 8,
    absent: int = 16,
    public: int = 2,
    unknown: int = 2,
) -> World:
    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    names = [f"org-{i:02d}" for i in range(orgs)]
    private = credentials - public - unknown
    # every org one key, the rest at random: some orgs are read by several keys, some by one
    orgs_of_keys = names + [rng.choice(names) for _ in range(private - orgs)]
    kinds = ["private"] * private + ["public"] * public + ["unknown"] * unknown
    members: list[Credential] = []
    for i, kind in enumerate(kinds):
        org = orgs_of_keys[i] if kind == "private" else None
        header = "Authorization" if i % 2 == 0 else "X-API-Key"
        members.append(Credential(new_id(), kind, org, header))
    runs = {new_id(): org for org in names for _ in range(runs_per_org)}
    return World(members, runs, [new_id() for _ in range(absent)])


# -- the workload ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    credential: Credential
    run: str
    route: str  # "run" or "related"
    method: str  # "GET" or "HEAD"
    no_cache: bool

    @property
    def path(self) -> str:
        return f"/v1/runs/{self.run}" + ("/related" if self.route == "related" else "")


@dataclass(frozen=True, slots=True)
class Write:
    credential: Credential
    run: str


@dataclass(frozen=True, slots=True)
class Purge:
    run: str


Op = Read | Write | Purge


@dataclass(frozen=True)
class Mix:
    """Shares of the workload (of all requests, or of reads for the read options)."""

    writes: float = 0.01
    purges: float = 0.005
    head: float = 0.15
    no_cache: float = 0.05
    related: float = 0.35
    hot: float = 0.5  # reads of a few hot runs, by their org's keys and by strangers
    foreign: float = 0.2  # other reads: a run of another org
    absent: float = 0.05  # other reads: a run nobody has
    hot_runs: int = 6


class Workload:
    """Random operations over a World; seeded, so a run can be repeated."""

    def __init__(self, world: World, rng: random.Random, mix: Mix) -> None:
        self._world, self._rng, self._mix = world, rng, mix
        self._all_runs = list(world.runs)
        # hot runs belong to orgs with several keys: same run, same moment, different scopes
        shared = [run for run, org in world.runs.items() if len(world.keys_of[org]) > 1]
        self.hot_runs = rng.sample(shared or self._all_runs, mix.hot_runs)
        self._private = [c for c in world.credentials if c.org is not None]

    def next(self) -> Op:
        rng, mix = self._rng, self._mix
        draw = rng.random()
        if draw < mix.writes:
            run = self._some_run()
            owners = self._world.keys_of[self._world.runs[run]]
            # mostly a key of the run's org; sometimes a stranger (Lunary says 200, changes nothing)
            credential = rng.choice(owners if rng.random() < 0.9 else self._private)
            return Write(credential, run)
        if draw < mix.writes + mix.purges:
            return Purge(self._some_run())
        credential, run = self._reader()
        return Read(
            credential,
            run,
            "related" if rng.random() < mix.related else "run",
            "HEAD" if rng.random() < mix.head else "GET",
            rng.random() < mix.no_cache,
        )

    def _some_run(self) -> str:
        return self._rng.choice(self.hot_runs if self._rng.random() < 0.5 else self._all_runs)

    def _reader(self) -> tuple[Credential, str]:
        rng, mix, world = self._rng, self._mix, self._world
        if rng.random() < mix.hot:
            run = rng.choice(self.hot_runs)
            owners = world.keys_of[world.runs[run]]
            return rng.choice(owners if rng.random() < 0.7 else world.credentials), run
        credential = rng.choice(world.credentials)
        if credential.org is None:
            return credential, rng.choice(self._all_runs)
        draw = rng.random()
        if draw < mix.absent:
            return credential, rng.choice(world.absent)
        if draw < mix.absent + mix.foreign:
            org = rng.choice([o for o in world.by_org if o != credential.org])
            return credential, rng.choice(world.by_org[org])
        return credential, rng.choice(world.by_org[credential.org])


# -- checking ----------------------------------------------------------------------------------

STALE_WINDOW = 0.05  # seconds: issue 16's bound on a replica answering a run after a write


@dataclass(frozen=True, slots=True)
class Ack:
    """A write's answer carrying a new version, as the client got it."""

    version: int
    at: float  # monotonic, when the client had the answer
    via: int  # index of the proxy the write went through


@dataclass(frozen=True, slots=True)
class Sent:
    """What a read knew when it was sent. Only acknowledgements that had already arrived can
    make its answer stale, so it keeps how many of its run's there were, not a clock bound:
    the classification needs no clock comparison to exclude writes acknowledged later."""

    at: float  # monotonic
    wall: float  # time.time(), to place the read in a soak's timeline
    acks: int  # len(Checker.acks[run]) at that moment
    via: int  # index of the proxy the read went through


@dataclass(frozen=True, slots=True)
class StaleRead:
    """A GET answered with a version older than a write acknowledged before it was sent."""

    sent: Sent
    since: float  # seconds from the first acknowledgement of a newer version to the send
    ack: Ack  # that acknowledgement
    got: int  # the version in the answer
    x_cache: str
    describe: str


@dataclass
class Tally:
    """What the client saw. `errors` are answers that could not be checked, by class."""

    requests: int = 0
    checked: int = 0
    leaks: int = 0
    wrong: int = 0
    by_cache: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_times: list[tuple[float, str]] = field(default_factory=list)
    # GET answers older than a write acknowledged before the read was sent, by X-Cache: inside
    # the window after that acknowledgement (allowed) or outside it (a failure)
    stale_inside: Counter[str] = field(default_factory=Counter)
    stale_outside: Counter[str] = field(default_factory=Counter)
    stale_outside_reads: list[StaleRead] = field(default_factory=list)
    writes_via: Counter[int] = field(default_factory=Counter)  # writes sent, by proxy index
    acks_via: Counter[int] = field(default_factory=Counter)  # writes with a new version, by proxy
    examples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, of answered requests

    def latency(self) -> str:
        if not self.latencies:
            return "none"
        ordered = sorted(self.latencies)
        p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
        return f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.0f} ms"

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
        self.error_times.append((time.time(), kind))

    def flag(self, what: str, op: Read, answer: Answer) -> None:
        if what == "leak":
            self.leaks += 1
        else:
            self.wrong += 1
        if len(self.examples) < 20:
            self.examples.append(
                f"{what}: {op.method} {op.path} by {op.credential.kind} key "
                f"{op.credential.marker} (org {op.credential.org}, {op.credential.header}"
                f"{', no-cache' if op.no_cache else ''}) -> {answer.status} "
                f"x-cache={answer.headers.get('x-cache')} "
                f"cache-status={answer.headers.get('cache-status')} readers in body: "
                f"{readers_in(answer.body)} body={answer.body[:100]!r}"
            )


def readers_in(body: bytes) -> list[str]:
    """The reader markers a body carries (for reports)."""
    return [part[:16].decode("latin-1") for part in body.split(b'"reader":"')[1:]]


class Checker:
    """Judges each answer against the World, and tracks acknowledged write versions per run,
    so a GET older than a write acknowledged before it was sent is told apart by how long after
    that acknowledgement it was sent: inside `window` seconds, or outside."""

    def __init__(self, world: World, body_bytes: int, window: float = STALE_WINDOW) -> None:
        self._world = world
        self._body_bytes = body_bytes
        self.window = window
        self.acks: dict[str, list[Ack]] = {}  # run -> acknowledged writes, in order of arrival
        self.issued: Counter[str] = Counter()  # run -> writes sent (an upper bound on version)
        self._etags: dict[tuple[str, str, str, int], str] = {}

    def acknowledge(self, run: str, version: int, via: int) -> None:
        """A write's answer reported `version`: from now on, a read of an older one is stale."""
        self.acks.setdefault(run, []).append(Ack(version, time.monotonic(), via))

    def sent(self, run: str, via: int) -> Sent:
        """Call right before a read of `run` is sent through proxy `via`."""
        return Sent(time.monotonic(), time.time(), len(self.acks.get(run, ())), via)

    def read(self, op: Read, answer: Answer, sent: Sent, tally: Tally) -> None:
        status = answer.status
        if status >= 500 or status in (429, 408):
            tally.error(f"read: {status // 100}xx {status}")
            return
        tally.checked += 1
        expected = self._world.expect(op.credential, op.run, op.route)
        verdict = self._head(op, answer, expected) if op.method == "HEAD" else self._get(op, answer)
        if verdict == "data" and expected is not Expect.DATA:
            tally.flag("leak", op, answer)  # data for a credential that may not see the run
        elif verdict in ("leak", "wrong"):
            tally.flag(verdict, op, answer)
        elif verdict != expected.value:
            tally.flag("wrong", op, answer)
        elif op.method == "GET" and expected is Expect.DATA:
            self._check_version(op, answer, sent, tally)

    def _get(self, op: Read, answer: Answer) -> str:
        """What the answer is: data/empty/not_found/unauthorized, or leak/wrong."""
        if answer.status == 401:
            return "unauthorized"
        if answer.status == 404:
            return "not_found" if answer.body == RUN_NOT_FOUND else "wrong"
        if answer.status != 200:
            return "wrong"
        if answer.headers.get("etag") != make_etag(answer.body):
            return "wrong"
        try:
            document = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return "wrong"
        rows = document if op.route == "related" else [document]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            return "wrong"
        if not rows:
            return "empty"
        if any(row.get("reader") != op.credential.marker for row in rows):
            return "leak"  # somebody else's body
        return "data" if rows[0].get("id") == op.run else "wrong"

    def _head(self, op: Read, answer: Answer, expected: Expect) -> str:
        """HEAD has no body: the ETag says whose body it stands for."""
        if answer.status == 401:
            return "unauthorized"
        if answer.status == 404:
            return "not_found"
        if answer.status != 200:
            return "wrong"
        etag = answer.headers.get("etag")
        if etag == make_etag(b"[]") and op.route == "related":
            return "empty"
        if expected is Expect.DATA and etag in self._candidate_etags(op, op.credential.marker):
            return "data"
        if expected is not Expect.DATA and answer.headers.get("content-length", "0") != "0":
            return "data"  # a body of a run this credential may not see
        others = (c.marker for c in self._world.credentials if c.marker != op.credential.marker)
        if any(etag in self._candidate_etags(op, other) for other in others):
            return "leak"
        return "wrong"

    def _candidate_etags(self, op: Read, reader: str) -> set[str]:
        return {
            self._etag(op.run, op.route, reader, version)
            for version in range(self.issued[op.run] + 1)
        }

    def _etag(self, run: str, route: str, reader: str, version: int) -> str:
        key = (run, route, reader, version)
        etag = self._etags.get(key)
        if etag is None:
            body = marked_body(run, reader, version, self._body_bytes)
            etag = self._etags[key] = make_etag(b"[" + body + b"]" if route == "related" else body)
        return etag

    def _check_version(self, op: Read, answer: Answer, sent: Sent, tally: Tally) -> None:
        """Class a GET older than an acknowledged write by the time from the *first*
        acknowledgement of a newer version to the send: a newer write acknowledged just before
        must not hide an older one acknowledged long before."""
        document = orjson.loads(answer.body)
        row = document[0] if op.route == "related" else document
        got = row.get("version", 0)
        known = itertools.islice(self.acks.get(op.run, ()), sent.acks)
        ack = next((ack for ack in known if ack.version > got), None)
        if ack is None:
            return
        since = sent.at - ack.at  # >= 0: the ack was taken before the read's Sent
        x_cache = answer.headers.get("x-cache", "-")
        if since <= self.window:
            tally.stale_inside[x_cache] += 1
            return
        tally.stale_outside[x_cache] += 1
        describe = (
            f"{op.method} {op.path} ({op.credential.marker}) via proxy {sent.via}, sent "
            f"{since * 1000:.1f} ms after version {ack.version} was acknowledged via proxy "
            f"{ack.via}: got version {got}, x-cache={x_cache} "
            f"cache-status={answer.headers.get('cache-status')} age={answer.headers.get('age')}"
        )
        tally.stale_outside_reads.append(StaleRead(sent, since, ack, got, x_cache, describe))


# -- driving load ------------------------------------------------------------------------------


def error_class(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | asyncio.IncompleteReadError):
        return "connection closed mid-request"
    if isinstance(exc, OSError):
        return f"os error {errno.errorcode.get(exc.errno or 0, exc.errno)}"
    return type(exc).__name__


@dataclass
class Driver:
    """Bounded concurrent clients: each worker keeps one connection per proxy."""

    urls: list[str]
    workload: Workload
    checker: Checker
    tally: Tally
    rng: random.Random
    on_op: Callable[[float, Op], None] | None = None  # told of each operation as it is sent
    on_read: Callable[[float, Read, Answer], None] | None = None  # and of each read's answer

    async def run(
        self, *, total: int, concurrency: int, deadline: float, rate: float | None = None
    ) -> None:
        """Until `total` operations or the monotonic `deadline`; `rate` paces (ops/s), no
        catch-up bursts: a worker that falls behind just goes on from now."""

        async def worker() -> None:
            connections = [HttpConnection(url) for url in self.urls]
            interval = concurrency / rate if rate else 0.0
            due = time.monotonic() + self.rng.random() * interval
            try:
                while self.tally.requests < total and time.monotonic() < deadline:
                    if interval:
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                        due = max(due + interval, time.monotonic())
                    self.tally.requests += 1
                    op = self.workload.next()
                    # every op, writes too, through any proxy: each replica takes writes
                    via = self.rng.randrange(len(connections))
                    await self.execute(connections[via], op, via)
            finally:
                for connection in connections:
                    connection.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def execute(self, connection: HttpConnection, op: Op, via: int) -> None:
        """Send `op` through `connection` (to proxy number `via`) and check what comes back."""
        tally = self.tally
        if self.on_op is not None:
            self.on_op(time.time(), op)
        kind = type(op).__name__.lower()
        tally.by_kind[kind] += 1
        if isinstance(op, Read):
            headers = op.credential.headers
            if op.no_cache:
                headers = {**headers, "Cache-Control": "no-cache"}
            method, path, body = op.method, op.path, None
        elif isinstance(op, Write):
            self.checker.issued[op.run] += 1
            tally.writes_via[via] += 1
            headers = {**op.credential.headers, "Content-Type": "application/json"}
            method, path = "PATCH", f"/v1/runs/{op.run}/tags"
            body = orjson.dumps([f"isolation-{tally.requests}"])
        else:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            method, path, body = "DELETE", f"/admin/cache/runs/{op.run}", None
        # taken last before sending, after every acknowledgement that arrived so far
        sent = self.checker.sent(op.run, via)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                answer = await connection.request(method, path, headers, body)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            tally.error(f"{kind}: {error_class(exc)}")
            return
        tally.latencies.append(time.perf_counter() - started)
        tally.by_status[str(answer.status)] += 1
        tally.by_cache[answer.headers.get("x-cache", "-")] += 1
        if isinstance(op, Read):
            self.checker.read(op, answer, sent, tally)
            if self.on_read is not None:
                self.on_read(time.time(), op, answer)
        elif answer.status != 200:
            tally.error(f"{kind}: {answer.status // 100}xx {answer.status}")
        elif isinstance(op, Write) and "x-origin-version" in answer.headers:
            self.checker.acknowledge(op.run, int(answer.headers["x-origin-version"]), via)
            tally.acks_via[via] += 1


# -- reporting ---------------------------------------------------------------------------------


def counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {value}" for name, value in counter.most_common()) or "none"


def tally_lines(
    tally: Tally,
    verdicts: Sequence[str],
    window: float,
    *,
    before_cache: Sequence[str] = (),
    before_latency: Sequence[str] = (),
) -> list[str]:
    """The client's side of a marker benchmark's report, which isolation and soak share; each
    script slots its own lines (`verdicts` on leaks and wrong answers, errors, duration) in
    where it has always printed them."""
    return [
        f"checked responses     {tally.checked}",
        *verdicts,
        "stale reads           GETs sent after a write was acknowledged that got an older "
        "version (same credential, not a leak), by how long after the acknowledgement:",
        f"  inside {window * 1000:g} ms        {sum(tally.stale_inside.values())} "
        f"(by X-Cache: {counts(tally.stale_inside)})",
        f"  outside (must be 0) {sum(tally.stale_outside.values())} "
        f"(by X-Cache: {counts(tally.stale_outside)})",
        *before_cache,
        f"by X-Cache            {counts(tally.by_cache)}",
        f"by status             {counts(tally.by_status)}",
        *before_latency,
        f"client latency        {tally.latency()}",
    ]


def proxy_report(proxies: Sequence[Service]) -> tuple[list[str], dict[str, float]]:
    """Lines on the proxies' own counters, and the totals the exit status depends on."""
    found = [metric_samples(p.url) for p in proxies]

    def summed(name: str, **labels: str) -> float:
        return sum(total(s, name, **labels) for s in found)

    def by(name: str, label: str, values: Sequence[str], **labels: str) -> str:
        return ", ".join(f"{v} {summed(name, **{label: v}, **labels):.0f}" for v in values)

    outcomes = ("joined", "replica", "timeout", "refetch")
    per_proxy = [f"{total(s, 'lunary_proxy_requests_total'):.0f}" for s in found]
    lines = [
        f"proxy requests        {by('lunary_proxy_requests_total', 'cache', CACHE_RESULTS)} "
        f"(per process: {', '.join(per_proxy)})",
        f"coalesced waits       {by('lunary_proxy_coalesced_waits_total', 'outcome', outcomes)}",
        f"background refreshes  {summed('lunary_proxy_background_refreshes_total'):.0f}",
        "invalidations         "
        + by("lunary_proxy_invalidations_total", "source", ("write", "admin"), result="ok")
        + f" (failed {summed('lunary_proxy_invalidations_total', result='error'):.0f})",
        "upstream fills        "
        + by(
            "lunary_proxy_upstream_requests_total",
            "status",
            ("2xx", "4xx", "5xx", "timeout", "unreachable"),
            purpose="fill",
        ),
        f"store errors          {summed('lunary_proxy_store_errors_total'):.0f}",
    ]
    totals = {
        "coalesced": summed("lunary_proxy_coalesced_waits_total"),
        "invalidations": summed("lunary_proxy_invalidations_total", result="ok"),
        "refreshes": summed("lunary_proxy_background_refreshes_total"),
    }
    return lines, totals


def log_problems(proxies: Sequence[Service]) -> list[str]:
    """Warning and error lines the proxies logged, and tracebacks (first few, and a count)."""
    markers = ('"level":"warning"', '"level":"error"', "Traceback")
    return [
        f"pid {proxy.pid}: {line[:300]}"
        for proxy in proxies
        for line in proxy.log().splitlines()
        if any(m in line for m in markers)
    ]


# -- the benchmark -----------------------------------------------------------------------------


async def load(
    urls: list[str], world: World, args: argparse.Namespace, rng: random.Random
) -> tuple[Tally, float]:
    checker = Checker(world, args.body_bytes, args.window_ms / 1000)
    tally = Tally()
    driver = Driver(urls, Workload(world, rng, Mix()), checker, tally, rng)
    started = time.monotonic()
    await driver.run(
        total=args.requests, concurrency=args.concurrency, deadline=started + args.max_seconds
    )
    return tally, time.monotonic() - started


# what both marker-mode benchmarks give their proxies besides the TTLs
PROXY_SETTINGS = {"admin_token": ADMIN_TOKEN, "upstream_timeout": "5", "log_level": "warning"}


@dataclass
class MarkerSystem:
    """A Redis, the origin in marker mode (serving `world`) and proxies sharing them."""

    redis: RedisServer
    origin: Service
    proxies: list[Service]

    def fills(self) -> list[Fill]:
        """The run reads the origin has served so far, to compare with what clients asked."""
        found: list[Fill] = httpx.get(self.origin.url + "/__fills", timeout=60).json()
        return found


@contextlib.contextmanager
def marker_system(
    world: World,
    proxies: int,
    *,
    latency: float,
    body_bytes: int,
    read_latency: float = 0.0,
    **settings: str,
) -> Iterator[MarkerSystem]:
    """Start them all on free loopback ports; stop them (by PID) in reverse order after.
    `settings` are the proxies' PROXY_* settings without the prefix (TTLs, `near_cache`), on
    top of PROXY_SETTINGS."""
    ports = free_ports(1 + proxies)
    with (
        RedisServer() as redis,
        tempfile.TemporaryDirectory(prefix="lcp-marker-") as directory,
        contextlib.ExitStack() as stack,
    ):
        world_file = Path(directory, "world.json")
        world.write_origin_file(world_file)
        origin = stack.enter_context(
            origin_service(
                ports[0],
                latency=latency,
                body_bytes=body_bytes,
                world=str(world_file),
                read_latency=read_latency,
            )
        )
        started = [
            stack.enter_context(
                shared_proxy(port, origin.url, redis.url, **{**PROXY_SETTINGS, **settings})
            )
            for port in ports[1:]
        ]
        yield MarkerSystem(redis, origin, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--proxies", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.03, help="origin latency, seconds")
    parser.add_argument(
        "--read-latency", type=float, default=0.0, help="origin: extra latency of run reads only"
    )
    parser.add_argument("--body-bytes", type=int, default=2048)
    parser.add_argument("--max-seconds", type=float, default=900, help="stop issuing after this")
    parser.add_argument("--seed", type=int, default=20261101)
    parser.add_argument(
        "--window-ms",
        type=float,
        default=STALE_WINDOW * 1000,
        help="a stale read sent within this long after the write's acknowledgement is allowed",
    )
    args = parser.parse_args()
    if args.proxies < 2:
        parser.error("--proxies must be at least 2")
    require("redis-server")

    rng = random.Random(args.seed)
    world = make_world(rng)
    ttls = {"cache_ttl": "1", "stale_ttl": "30", "negative_ttl": "1"}
    print(f"isolation: {args.proxies} proxies, {world.describe()}, concurrency "
          f"{args.concurrency}, origin latency {args.latency * 1000:.0f} ms (+"
          f"{args.read_latency * 1000:.0f} ms on reads), fresh "
          f"{ttls['cache_ttl']} s, stale {ttls['stale_ttl']} s, negative {ttls['negative_ttl']} s, "
          f"seed {args.seed}", flush=True)  # fmt: skip
    with marker_system(
        world,
        args.proxies,
        latency=args.latency,
        body_bytes=args.body_bytes,
        read_latency=args.read_latency,
        **ttls,
    ) as system:
        proxies = system.proxies
        tally, elapsed = uvloop.run(load([p.url for p in proxies], world, args, rng))
        metric_lines, totals = proxy_report(proxies)
        problems = log_problems(proxies)
        fills = len(system.fills())

    print(f"requests              {tally.requests} ({counts(tally.by_kind)})")
    verdicts = [f"leaks                 {tally.leaks}", f"wrong answers         {tally.wrong}"]
    errors_and_duration = [
        f"errors                {counts(tally.errors)}",
        f"duration              {elapsed:.1f} s ({tally.requests / elapsed:.0f} requests/s)",
    ]
    window = args.window_ms / 1000
    for line in tally_lines(tally, verdicts, window, before_latency=errors_and_duration):
        print(line)
    print(f"origin run reads      {fills} ({fills / max(tally.requests, 1):.3f} per request)")
    for line in metric_lines:
        print(line)
    print(f"proxy log warnings/errors: {len(problems)}")
    for line in problems[:10]:
        print("  " + line)
    for example in tally.examples:
        print("  " + example)
    for stale in tally.stale_outside_reads[:20]:
        print("  stale: " + stale.describe)
    exercised = {
        "HIT": tally.by_cache["HIT"],
        "MISS": tally.by_cache["MISS"],
        "STALE": tally.by_cache["STALE"],
        **totals,
    }
    missing = [name for name, value in exercised.items() if not value]
    if tally.leaks or tally.wrong:
        print("FAIL: answers reached the wrong credential or were wrong")
        sys.exit(1)
    if tally.stale_outside:
        print(f"FAIL: stale reads sent more than {args.window_ms:g} ms after the write")
        sys.exit(1)
    if missing:
        print(f"FAIL: not exercised: {', '.join(missing)}")
        sys.exit(2)
    print("OK: no leak, no wrong answer, no stale read outside the window")


if __name__ == "__main__":
    main()
