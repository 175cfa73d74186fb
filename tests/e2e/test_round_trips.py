"""What a read costs Redis, counted by Redis itself (MONITOR): a cold miss two round trips (the
lookup that takes the fill lock, then the store that releases it), a hit one (and none once the
in-process tier holds it), and a herd of concurrent misses in one process no more than one of
them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator

import httpx
import redis

from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary
from tests.servers import RedisServer


class Monitor:
    """Every command a client sent Redis while it was open, as MONITOR reports it (not the
    commands a script runs inside: those are part of its one round trip)."""

    def __init__(self, server: RedisServer) -> None:
        self._server = server
        self._marker = f"monitor-done-{uuid.uuid4().hex}"
        self._ready = threading.Event()
        self._seen: list[str] = []
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        assert self._ready.wait(5), "MONITOR did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.client().echo(self._marker)  # the last command it will read
        self._thread.join(5)
        assert not self._thread.is_alive(), "MONITOR did not see its marker"

    def _listen(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self._server.port, socket_timeout=10)
        try:
            with client.monitor() as monitor:  # type: ignore[no-untyped-call]
                self._ready.set()
                for command in monitor.listen():
                    if command["command"] == f"ECHO {self._marker}":
                        return
                    if command["client_type"] != "lua":
                        self._seen.append(command["command"])
        finally:
            client.close()

    def naming(self, run: str) -> list[str]:
        """The round trips that touched `run`'s keys."""
        return [command for command in self._seen if run in command]


@contextlib.contextmanager
def monitored(server: RedisServer) -> Iterator[Monitor]:
    with Monitor(server) as monitor:
        yield monitor


def warmed_proxy(make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str) -> RunningProxy:
    """A proxy whose scripts Redis has loaded (the first call of each costs a SCRIPT LOAD)."""
    proxy = make_proxy(redis_url=redis_url)
    key = fake.add_key("org-warm")
    proxy.get(f"/v1/runs/{fake.add_run('org-warm')}", headers={"X-API-Key": key})
    return proxy


def test_a_cold_miss_costs_two_round_trips_and_a_hit_one(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = warmed_proxy(make_proxy, fake, redis_url)
    headers = {"X-API-Key": fake.add_key()}
    run = fake.add_run()

    with monitored(redis_server) as cold:
        miss = proxy.get(f"/v1/runs/{run}", headers=headers)
    with monitored(redis_server) as warm:
        hit = proxy.get(f"/v1/runs/{run}", headers=headers)
    with monitored(redis_server) as near:
        near_hit = proxy.get(f"/v1/runs/{run}", headers=headers)

    assert miss.headers["x-cache"] == "MISS"
    assert "stored" in miss.headers["cache-status"]
    assert hit.headers["x-cache"] == "HIT"
    assert len(cold.naming(run)) == 2
    lookup, store = cold.naming(run)
    assert f"{{{run}}}:lock:" in lookup  # the lookup took the fill lock itself
    assert f"{{{run}}}:lock:" in store  # the store released it
    assert len(warm.naming(run)) == 1  # read back from Redis, and kept in the process
    assert near_hit.headers["x-cache"] == "HIT"
    assert near.naming(run) == []  # answered by the in-process tier
    assert near_hit.content == hit.content
    assert fake.count(run) == 1


def test_a_miss_on_an_entry_of_an_older_generation_costs_two_round_trips(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = warmed_proxy(make_proxy, fake, redis_url)
    headers = {"X-API-Key": fake.add_key()}
    run = fake.add_run()
    assert proxy.get(f"/v1/runs/{run}", headers=headers).headers["x-cache"] == "MISS"
    # a write through another replica (INVALIDATE's INCR), without its announcement
    redis_server.client().set(f"lcp:1:{{{run}}}:gen", b"1700000000123456")

    with monitored(redis_server) as seen:
        again = proxy.get(f"/v1/runs/{run}", headers=headers)

    assert again.headers["x-cache"] == "MISS"
    assert len(seen.naming(run)) == 2
    assert fake.count(run) == 2


async def test_a_herd_of_misses_in_one_process_costs_two_round_trips(
    make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = warmed_proxy(make_proxy, fake, redis_url)
    headers = {"X-API-Key": fake.add_key()}
    run = fake.add_run()
    fake.latency = 0.5  # every request of the herd arrives while the fill runs

    with monitored(redis_server) as seen:
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=16)) as c:
            answers = await asyncio.gather(
                *(c.get(f"{proxy.url}/v1/runs/{run}", headers=headers) for _ in range(16))
            )

    assert {a.headers["x-cache"] for a in answers} == {"MISS"}
    assert len({a.content for a in answers}) == 1
    assert len(seen.naming(run)) == 2
    assert fake.count(run) == 1
