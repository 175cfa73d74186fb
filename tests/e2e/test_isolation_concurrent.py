"""Isolation under concurrency: across two proxy processes, no body reaches the wrong credential.

The per-request isolation tests show one answer at a time is scoped; this one races them. Fifty
credentials (Authorization and X-API-Key, several per org so they see the same runs, and public
and unknown keys that Lunary answers 401) read runs concurrently through two proxies sharing a
real Redis, with short TTLs and a slow upstream so hits, misses, coalesced waits and stale
answers interleave, and writes and admin purges invalidate runs meanwhile. The fake upstream
marks every body with a digest of the credential that read it, so each answer can be traced to
whose fetch it came from. benchmarks/isolation.py is the long version (100,000+ requests).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from tests.fake_lunary import FakeLunary, reader_marker
from tests.prometheus import samples, total
from tests.servers import ProxyProcess, ServerThread, replica_settings, running_replicas

ADMIN_TOKEN = "isolation-test-admin-token"
LOAD_SECONDS = 6.0
CONCURRENCY = 32
RUN_NOT_FOUND = {"message": "Run not found"}


@dataclass(frozen=True)
class Credential:
    token: str
    header: str  # "Authorization" or "X-API-Key"
    org: str | None  # None: Lunary answers 401 (a public or unknown key)

    @property
    def headers(self) -> dict[str, str]:
        if self.header == "Authorization":
            return {"Authorization": f"Bearer {self.token}"}
        return {"X-API-Key": self.token}

    @property
    def marker(self) -> str:
        return reader_marker(self.token)


@dataclass(frozen=True)
class Read:
    credential: Credential
    run: str
    route: str  # "run" or "related"
    method: str  # "GET" or "HEAD"

    @property
    def path(self) -> str:
        return f"/v1/runs/{self.run}" + ("/related" if self.route == "related" else "")


@dataclass
class Universe:
    credentials: list[Credential]
    runs: dict[str, str]  # run -> org
    absent: list[str]  # run ids nobody has
    hot: list[str]  # runs read in many scopes at once

    def owners(self, run: str) -> list[Credential]:
        return [c for c in self.credentials if c.org == self.runs[run]]

    def owners_of(self, credential: Credential) -> list[Credential]:
        """The private keys that see the same runs as `credential` (itself included)."""
        return [c for c in self.credentials if c.org is not None and c.org == credential.org]

    def expected(self, read: Read) -> str:
        """What Lunary answers: "401", "data" (with the reader's marker), "[]" or "404"."""
        if read.credential.org is None:
            return "401"
        if self.runs.get(read.run) == read.credential.org:
            return "data"
        return "[]" if read.route == "related" else "404"


def populate(fake: FakeLunary, rng: random.Random) -> Universe:
    """50 credentials: 46 private keys in 16 orgs (one each, the rest at random), 2 public
    keys, 2 keys Lunary does not know; headers alternate. Four settled runs per org."""
    orgs = [f"org-{i}" for i in range(16)]
    key_orgs: list[str | None] = [*orgs, *(rng.choice(orgs) for _ in range(30))]
    tokens = [fake.add_key(org) for org in key_orgs if org is not None]
    tokens += [fake.add_key(orgs[0], private=False) for _ in range(2)]
    tokens += [str(uuid.uuid4()) for _ in range(2)]
    key_orgs += [None] * 4
    credentials = [
        Credential(token, "Authorization" if i % 2 == 0 else "X-API-Key", org)
        for i, (token, org) in enumerate(zip(tokens, key_orgs, strict=True))
    ]
    runs = {fake.add_run(org): org for org in orgs for _ in range(4)}
    absent = [str(uuid.uuid4()) for _ in range(6)]
    # hot runs belong to orgs with several keys: same run, same moment, different scopes
    shared = [run for run, org in runs.items() if key_orgs.count(org) > 1]
    return Universe(credentials, runs, absent, rng.sample(shared, 2))


@dataclass
class Observed:
    requests: int = 0
    checked: int = 0
    leaks: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    x_cache: Counter[str] = field(default_factory=Counter)
    expectations: Counter[str] = field(default_factory=Counter)
    read_errors: Counter[str] = field(default_factory=Counter)
    other_errors: Counter[str] = field(default_factory=Counter)
    etag_reader: dict[str, str] = field(default_factory=dict)  # ETag of a 200 body -> its reader


def judge(seen: Observed, universe: Universe, read: Read, answer: httpx.Response) -> None:
    """Check one read against what Lunary says to this credential; record leaks and mismatches."""
    expected = universe.expected(read)
    seen.expectations[expected] += 1
    status, marker = answer.status_code, read.credential.marker
    what = (
        f"{read.method} {read.path} by {read.credential.header} key {marker} "
        f"(org {read.credential.org}) -> {status} {answer.headers.get('x-cache')} "
        f"{answer.headers.get('cache-status')} {answer.content[:120]!r}"
    )
    if status >= 500:
        seen.read_errors[str(status)] += 1
        return
    seen.checked += 1
    if status == 200 and read.method == "HEAD":
        # no body: the ETag tells whose body it stands for, the length whether it has data
        if seen.etag_reader.get(answer.headers.get("etag", ""), marker) != marker:
            seen.leaks.append("HEAD with another reader's ETag: " + what)
            return
        has_data = read.route == "run" or answer.headers.get("content-length") != "2"
        if has_data and expected != "data":
            seen.leaks.append("data for a credential that may not see it: " + what)
        elif (has_data and expected == "data") or (not has_data and expected == "[]"):
            return
        seen.wrong.append(what)
        return
    if status == 200:
        document = orjson.loads(answer.content)
        rows = document if read.route == "related" else [document]
        if rows and expected != "data":
            seen.leaks.append("data for a credential that may not see it: " + what)
        elif any(row.get("reader") != marker for row in rows):
            seen.leaks.append("another credential's body: " + what)
        elif (rows and rows[0]["id"] == read.run) or (not rows and expected == "[]"):
            if rows:
                seen.etag_reader[answer.headers["etag"]] = marker
            return
        seen.wrong.append(what)
        return
    if status == 404 and expected == "404":
        if read.method == "HEAD" or answer.json() == RUN_NOT_FOUND:
            return
    elif status == 401 and expected == "401":
        return
    seen.wrong.append(what)


async def drive(universe: Universe, urls: list[str], seed: int) -> Observed:
    """CONCURRENCY clients for LOAD_SECONDS: reads (GET/HEAD, both routes, some no-cache) of
    hot runs in many scopes and of random runs, with writes and admin purges in between."""
    seen = Observed()
    rng = random.Random(seed)
    private = [c for c in universe.credentials if c.org is not None]
    all_runs = list(universe.runs)
    deadline = time.monotonic() + LOAD_SECONDS

    def next_read() -> Read:
        if rng.random() < 0.7:  # a hot run: mostly its org's keys, some strangers
            run = rng.choice(universe.hot)
            owners = universe.owners(run)
            credential = rng.choice(owners if rng.random() < 0.7 else universe.credentials)
        else:
            credential, draw = rng.choice(universe.credentials), rng.random()
            if credential.org is None or draw < 0.2:
                run = rng.choice(all_runs)
            elif draw < 0.25:
                run = rng.choice(universe.absent)
            else:
                run = rng.choice([r for r, o in universe.runs.items() if o == credential.org])
        route = "related" if rng.random() < 0.35 else "run"
        return Read(credential, run, route, "HEAD" if rng.random() < 0.15 else "GET")

    async def one(client: httpx.AsyncClient) -> None:
        seen.requests += 1
        url, draw = rng.choice(urls), rng.random()
        target = rng.choice(universe.hot if rng.random() < 0.5 else all_runs)
        if draw < 0.02:
            writer = rng.choice(universe.owners(target) if rng.random() < 0.9 else private)
            body = {"tags": [f"t{seen.requests}"]}
            answer = await client.patch(
                f"{url}/v1/runs/{target}/tags", headers=writer.headers, json=body
            )
            if answer.status_code != 200:
                seen.other_errors[f"write {answer.status_code}"] += 1
            return
        if draw < 0.03:
            bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            answer = await client.delete(f"{url}/admin/cache/runs/{target}", headers=bearer)
            if answer.status_code != 200:
                seen.other_errors[f"purge {answer.status_code}"] += 1
            return
        read = next_read()
        headers = dict(read.credential.headers)
        if rng.random() < 0.05:
            headers["Cache-Control"] = "no-cache"
        try:
            answer = await client.request(read.method, url + read.path, headers=headers)
        except httpx.TransportError as exc:
            seen.read_errors[type(exc).__name__] += 1
            return
        seen.x_cache[answer.headers.get("x-cache", "-")] += 1
        judge(seen, universe, read, answer)

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            await one(client)

    limits = httpx.Limits(max_connections=CONCURRENCY * len(urls))
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return seen


@pytest.fixture
def replicas(upstream: ServerThread, redis_url: str) -> Iterator[list[ProxyProcess]]:
    """Two proxy processes on one Redis: fresh 1 s, stale 30 s, 404s 1 s, admin on."""
    settings = replica_settings(
        upstream.url, redis_url, cache_ttl="1", stale_ttl="30", negative_ttl="1",
        admin_token=ADMIN_TOKEN, upstream_timeout="5",
    )  # fmt: skip
    with running_replicas(2, settings) as procs:
        yield procs


def metric_sum(urls: list[str], name: str, **labels: str) -> float:
    return sum(total(samples(httpx.get(url + "/metrics").text), name, **labels) for url in urls)


async def test_no_body_reaches_another_credential_under_concurrent_load(
    fake: FakeLunary, replicas: list[ProxyProcess]
) -> None:
    fake.reader_markers = True
    fake.read_latency = 0.05  # fills overlap, so waits coalesce
    fake.rate_limit = 10**9  # one client address: never 429
    universe = populate(fake, random.Random(7))
    urls = [proxy.url for proxy in replicas]
    shared = [c for c in universe.credentials if len(universe.owners_of(c)) > 1]
    assert len(universe.credentials) == 50
    assert {c.header for c in shared} == {"Authorization", "X-API-Key"}

    seen = await drive(universe, urls, seed=11)

    summary = (
        f"{seen.requests} requests, {seen.checked} checked, X-Cache {dict(seen.x_cache)}, "
        f"expected {dict(seen.expectations)}, errors {dict(seen.read_errors)} "
        f"{dict(seen.other_errors)}"
    )
    assert seen.leaks == [], summary
    assert seen.wrong == [], summary
    assert seen.read_errors == Counter(), summary
    # a purge answers 503 when Redis did not answer in time (a busy 2-core machine): tolerated
    assert set(seen.other_errors) <= {"purge 503"}, summary
    assert seen.checked >= 300, summary
    # the run exercised what it claims: every kind of answer, every cache path, invalidations
    assert {"data", "[]", "404", "401"} <= set(seen.expectations), summary
    assert {"HIT", "MISS", "STALE"} <= set(seen.x_cache), summary
    assert metric_sum(urls, "lunary_proxy_coalesced_waits_total") > 0
    assert metric_sum(urls, "lunary_proxy_invalidations_total", source="write", result="ok") > 0
    assert metric_sum(urls, "lunary_proxy_invalidations_total", source="admin", result="ok") > 0
