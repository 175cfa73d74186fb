"""Fill announcements over Redis pub/sub, so waiters in other replicas wake when an entry lands.

One subscriber connection per process listens on one channel. A leader publishes only when a
waiter flagged itself (the flag and the publish live in the fill scripts), so uncontended misses
cost no pub/sub traffic at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from redis.asyncio import Redis, RedisCluster

from proxy.store.connection import close_client

log = logging.getLogger("proxy.store")

RECONNECT_DELAYS = (0.1, 0.25, 0.5, 1.0)


class FillNotices:
    """Resolves the futures of local waiters when a fill of their key is announced."""

    def __init__(self, client: Redis | RedisCluster, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._waiting: dict[bytes, set[asyncio.Future[None]]] = {}
        self.subscribed = asyncio.Event()

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
                await pubsub.subscribe(self._channel)
                self.subscribed.set()
                attempt = 0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._wake(message["data"])
            except Exception as exc:  # the listener must outlive any client error
                self.subscribed.clear()
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                attempt += 1
                log.debug("fill notices lost, reconnecting", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await close_client(self._client)

    def _wake(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        for future in self._waiting.pop(data, ()):
            if not future.done():
                future.set_result(None)
