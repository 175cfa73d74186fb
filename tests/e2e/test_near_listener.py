"""The in-process tier's listener, across a resubscribe and while idle (found in review).

redis-py's subscribe returns once SUBSCRIBE is *sent*: an invalidation Redis runs before it
processes the SUBSCRIBE is never heard, so the listener counts as back, and the tier is trusted,
only once Redis confirmed both subscriptions. A loopback TCP relay in front of Redis holds the
listener's bytes from its SUBSCRIBE on, which widens that window (one round trip in production)
so the sequence can be staged in order.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ProxyFactory, RunningProxy
from tests.e2e.test_invalidation import metric
from tests.e2e.test_near_tier import NEAR_HITS, read, until
from tests.fake_lunary import FakeLunary
from tests.servers import RedisServer


class SubscribeHoldingRelay:
    """Forwards loopback TCP to Redis; once armed, each connection that sends SUBSCRIBE has that
    chunk and everything after it held (in order) until `release`."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed = False
        self.holding = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._subscribers: list[socket.socket] = []
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def arm(self) -> None:
        self._armed = True

    def release(self) -> None:
        self._released.set()

    def cut_subscribers(self) -> None:
        """Close the listener's connection, as a network failure would."""
        with self._lock:
            for sock in self._subscribers:
                sock.shutdown(socket.SHUT_RDWR)
            self._subscribers.clear()

    def close(self) -> None:
        self._released.set()
        _close(self._listener)
        self._listener.close()
        self._threads[0].join(5)
        with self._lock:
            for sock in self._sockets:
                _close(sock)
        for thread in self._threads[1:]:
            thread.join(5)
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._sockets += [client, server]
            for thread in (
                threading.Thread(target=self._upward, args=(client, server), daemon=True),
                threading.Thread(target=self._pump, args=(server, client), daemon=True),
            ):
                self._threads.append(thread)
                thread.start()

    def _upward(self, client: socket.socket, server: socket.socket) -> None:
        held = False
        while chunk := _recv(client):
            if b"SUBSCRIBE" in chunk.upper():
                with self._lock:
                    self._subscribers.append(client)
                if self._armed:  # every one: redis-py resubscribes the lost pub/sub first
                    held = True
                    self.holding.set()
            if held:
                self._released.wait()
            try:
                server.sendall(chunk)
            except OSError:
                break
        _close(server)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while chunk := _recv(source):
            try:
                sink.sendall(chunk)
            except OSError:
                break
        _close(sink)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def relay(redis_url: str, redis_server: RedisServer) -> Iterator[SubscribeHoldingRelay]:
    port = int(redis_url.split(":")[2].split("/")[0])
    relay = SubscribeHoldingRelay(port)
    yield relay
    relay.close()


def _tier_answered(reader: RunningProxy, run: str, key: str, hits: float) -> bool:
    read(reader, run, key)
    return metric(reader, NEAR_HITS, result="hit") > hits


def test_the_tier_is_not_trusted_until_redis_confirmed_the_resubscribe(
    relay: SubscribeHoldingRelay, make_proxy: ProxyFactory, fake: FakeLunary, redis_url: str
) -> None:
    """The relay is set up first, so it is closed after the proxies."""
    reader = make_proxy(redis_url=f"redis://127.0.0.1:{relay.port}/0", near_ttl=60)
    writer = make_proxy(redis_url=redis_url)
    key, run = fake.add_key(), fake.add_run()
    read(reader, run, key)  # filled and stored in Redis

    relay.arm()
    relay.cut_subscribers()  # the listener is lost; it reconnects and sends SUBSCRIBE (held)
    assert relay.holding.wait(5)
    time.sleep(0.2)  # the listener's own pub/sub (after redis-py's resubscribe) is held too
    hits = metric(reader, NEAR_HITS, result="hit")
    # reads while SUBSCRIBE is sent but not confirmed: Redis answers, the tier neither keeps
    # nor answers (an announcement made now would not reach this listener)
    during = [read(reader, run, key) for _ in range(5)]
    hits_during = metric(reader, NEAR_HITS, result="hit") - hits
    written = writer.client.patch(
        f"/v1/runs/{run}/tags", json={"tags": ["new"]}, headers={"X-API-Key": key}
    )  # announced before Redis has the reader's SUBSCRIBE: never heard by the reader
    relay.release()
    time.sleep(0.5)  # the SUBSCRIBE and the pings land; the listener hears its pongs
    after = read(reader, run, key)
    time.sleep(1.0)  # past the heartbeat window: the listener is alive and the tier trusted
    later = read(reader, run, key)

    assert [answer.status_code for answer in during] == [200] * 5
    assert hits_during == 0
    assert written.status_code == 200
    assert after.json()["tags"] == ["new"], (after.headers["x-cache"], after.json()["tags"])
    assert later.json()["tags"] == ["new"], (later.headers["x-cache"], later.json()["tags"])


@pytest.mark.parametrize("store", ["redis", "cluster"])
def test_an_idle_listener_stays_alive_on_its_heartbeat(
    make_proxy: ProxyFactory, fake: FakeLunary, request: pytest.FixtureRequest, store: str
) -> None:
    """Pongs count as heard on plain Redis and on a Cluster's pub/sub node: an idle tier is
    neither reset nor bypassed (a control for the finding above)."""
    settings: dict[str, object] = {"redis_url": request.getfixturevalue("redis_url")}
    if store == "cluster":
        settings = {
            "redis_url": request.getfixturevalue("redis_cluster_url"),
            "redis_cluster": True,
        }
    reader = make_proxy(near_ttl=60, **settings)
    key, run = fake.add_key(), fake.add_run()
    hits = metric(reader, NEAR_HITS, result="hit")
    until(lambda: _tier_answered(reader, run, key, hits))
    bypassed = metric(reader, NEAR_HITS, result="bypass")

    time.sleep(2.5)  # more than twice the heartbeat window, nothing published
    answer = read(reader, run, key)

    assert answer.headers["x-cache"] == "HIT"
    assert metric(reader, "lunary_proxy_near_invalidations_total", cause="reset") == 0
    assert metric(reader, NEAR_HITS, result="bypass") == bypassed
