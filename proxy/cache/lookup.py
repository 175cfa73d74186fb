"""The lookup step: one store lookup per key at a time in this process, shared by a herd."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.cache.ports import Store
from proxy.core.model import EntryKey, Lookup


class SharedLookups:
    """Concurrent lookups of one key share the first request's store round trip.

    A herd arrives all at once, before any fill is in flight to join; sharing the lookup keeps it
    to one store round trip per key and process instead of one per request.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[EntryKey, asyncio.Future[Lookup]] = {}

    def forget(self, matches: Callable[[EntryKey], bool]) -> None:
        """Detach the lookups of matching keys: they began before a write nobody may miss."""
        for key in [key for key in self._pending if matches(key)]:
            del self._pending[key]

    async def lookup(self, key: EntryKey) -> Lookup:
        """The first request looks up inline (a task per hit would cost an event-loop turn) and
        hands the answer to the others through a future; if it is cancelled, they look up
        themselves."""
        pending = self._pending.get(key)
        if pending is not None:
            return await self._join(key, pending)
        shared: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()
        self._pending[key] = shared
        try:
            found = await self._store.lookup(key)
        except Exception as exc:
            shared.set_exception(exc)
            shared.exception()  # retrieved: with nobody joined, asyncio must not log it
            raise
        except BaseException:  # cancelled (or the process is going down): joiners look up
            shared.cancel()
            raise
        finally:
            if self._pending.get(key) is shared:
                del self._pending[key]
        shared.set_result(found)
        return found

    async def _join(self, key: EntryKey, pending: asyncio.Future[Lookup]) -> Lookup:
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not pending.cancelled() or (current is not None and current.cancelling()):
                raise
        return await self._store.lookup(key)  # the first request went away mid-lookup
