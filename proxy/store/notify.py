"""Announcements over Redis pub/sub between replicas: fills that landed, runs invalidated.

One subscriber connection per process listens on both channels. A leader publishes a fill only
when a waiter flagged itself (the flag and the publish live in the fill scripts), so uncontended
misses cost no pub/sub traffic at all. An invalidation is announced in the script that raises
the run's generation, before the writer's client hears back: every replica then detaches its
fills of that run under way, so a read sent after the write's answer never joins a fill that
began before it (it would hand back the old body), wherever the write went.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub

from proxy.store.connection import close_client

log = logging.getLogger("proxy.store")

RECONNECT_DELAYS = (0.1, 0.25, 0.5, 1.0)
# The listener pings Redis this often on its subscribed connection, and counts as dead after
# this long without hearing anything (a message or a pong): a partition or a stopped server
# closes no socket, and whatever trusts the announcements (the in-process tier) must know.
HEARTBEAT_EVERY = 0.25
SILENT_AFTER = 1.0


class ListenerSilent(Exception):
    """A ping on the subscribed connection went unanswered for SILENT_AFTER."""


class FillNotices:
    """Resolves the futures of local waiters when a fill of their key is announced, and calls
    `on_invalidated` with each run another replica (or this one) invalidated."""

    def __init__(
        self, client: Redis | RedisCluster, channel: str, invalidated_channel: str
    ) -> None:
        self._client = client
        self._channel = channel
        self._invalidated_channel = invalidated_channel.encode()
        self._waiting: dict[bytes, set[asyncio.Future[None]]] = {}
        self.subscribed = asyncio.Event()
        self.on_invalidated: Callable[[str], None] = lambda run_id: None
        # a fail-safe cut (proxy/core/cuts.py): its field and time
        self.on_cut: Callable[[str, float], None] = lambda field, at: None
        # (re)subscribed, and lost: cuts announced while this listener was away are read back
        self.on_subscribed: Callable[[], object] = lambda: None
        self.on_lost: Callable[[], None] = lambda: None
        # heard from (a message or a pong): alive until the given monotonic time
        self.on_alive: Callable[[float], None] = lambda until: None

    @contextlib.contextmanager
    def watch(self, redis_key: str) -> Iterator[asyncio.Future[None]]:
        """A future that resolves when `redis_key` is announced; register before asking to lead."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        name = redis_key.encode()
        self._waiting.setdefault(name, set()).add(future)
        try:
            yield future
        finally:
            waiters = self._waiting.get(name)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiting[name]

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with a short backoff when Redis goes away."""
        attempt = 0
        while True:
            pubsub = self._client.pubsub()
            try:
                if isinstance(self._client, RedisCluster):
                    await self._client.initialize()  # its pub/sub needs the slot map first
                await pubsub.subscribe(self._channel, self._invalidated_channel)
                await self._confirmed(pubsub)
                self.subscribed.set()
                self.on_alive(time.monotonic() + SILENT_AFTER)
                self.on_subscribed()
                attempt = 0
                await self._listen(pubsub)
            except Exception as exc:  # the listener must outlive any client error
                self.subscribed.clear()
                self.on_alive(0.0)
                self.on_lost()
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                attempt += 1
                log.debug("fill notices lost, reconnecting", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _confirmed(self, pubsub: PubSub) -> None:
        """Until Redis has confirmed both subscriptions (redis-py's subscribe returns once the
        command is sent): an announcement made before that does not reach this listener, so
        nothing may count on the announcements yet."""
        waiting = {self._channel.encode(), self._invalidated_channel}
        async with asyncio.timeout(SILENT_AFTER):
            while waiting:
                message = await pubsub.get_message(timeout=SILENT_AFTER)
                if message is None:
                    continue
                if message.get("type") == "subscribe":
                    channel = message["channel"]
                    waiting.discard(channel if isinstance(channel, bytes) else channel.encode())
                elif message.get("type") == "message":
                    self._dispatch(message["channel"], message["data"])

    async def _listen(self, pubsub: PubSub) -> None:
        """Dispatch messages, pinging every HEARTBEAT_EVERY; raise ListenerSilent when a ping
        has gone unanswered (nothing at all heard since it was sent) for SILENT_AFTER. Timed
        from the ping, not from the last message, so a stalled event loop, whose answers are
        waiting in the socket, is not taken for a dead listener."""
        pinged = time.monotonic()
        unanswered_since: float | None = None
        while True:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=HEARTBEAT_EVERY
            )
            now = time.monotonic()
            if message is not None:
                unanswered_since = None
                self.on_alive(now + SILENT_AFTER)
                if message.get("type") == "message":
                    self._dispatch(message["channel"], message["data"])
            elif unanswered_since is not None and now - unanswered_since > SILENT_AFTER:
                raise ListenerSilent(f"a ping unanswered for {now - unanswered_since:.2f} s")
            if now - pinged >= HEARTBEAT_EVERY:
                pinged = now
                if unanswered_since is None:
                    unanswered_since = now
                async with asyncio.timeout(SILENT_AFTER):  # a peer that stopped reading
                    await pubsub.ping()

    async def close(self) -> None:
        await close_client(self._client)

    def _cut(self, data: bytes) -> None:
        head, _, at = data.decode("ascii", "replace").rpartition(" ")
        try:
            self.on_cut(head.removeprefix("cut "), float(at))
        except ValueError:
            log.debug("a cut announcement that is not ours", extra={"data": data[:64]})

    def _dispatch(self, channel: object, data: object) -> None:
        if not isinstance(data, bytes):
            return
        if channel == self._invalidated_channel:
            if data.startswith(b"cut "):
                self._cut(data)
            else:
                self.on_invalidated(data.decode("ascii", "replace"))
            return
        for future in self._waiting.pop(data, ()):
            if not future.done():
                future.set_result(None)
