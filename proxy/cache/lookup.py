"""The lookup step: one store lookup per key at a time in this process, shared by a herd.

The lookup also claims the key's fill lock when nothing servable is stored (Store.lookup_or_lead),
so a cold miss reaches its fetch in one round trip; the claim goes to the one request that made
the call, which leads the fill the others join.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from proxy.cache.ports import Store
from proxy.cache.replicas import Held, Led, claimed
from proxy.core.model import EntryKey, Lookup


@dataclass(frozen=True, slots=True)
class Looked:
    """What one request learnt: the entry and generation, and what it holds of the fill lock
    (None for the requests that joined another's lookup: they join its fill too)."""

    found: Lookup
    claim: Led | Held | None = None


class SharedLookups:
    """Concurrent lookups of one key share the first request's store round trip.

    A herd arrives all at once, before any fill is in flight to join; sharing the lookup keeps it
    to one store round trip per key and process instead of one per request.
    """

    def __init__(self, store: Store, lease: float) -> None:
        self._store = store
        self._lease = lease
        self._pending: dict[EntryKey, asyncio.Future[Lookup]] = {}

    def forget(self, matches: Callable[[EntryKey], bool]) -> None:
        """Detach the lookups of matching keys: they began before a write nobody may miss."""
        for key in [key for key in self._pending if matches(key)]:
            del self._pending[key]

    async def lookup(self, key: EntryKey) -> Looked:
        """The first request looks up inline (a task per hit would cost an event-loop turn) and
        hands the answer, not its claim, to the others through a future; if it is cancelled,
        they look up themselves (the store gives back a lock the cancelled call took)."""
        pending = self._pending.get(key)
        if pending is not None:
            return Looked(await self._join(key, pending))
        shared: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()
        self._pending[key] = shared
        token = secrets.token_hex(8)
        try:
            claim = await self._store.lookup_or_lead(key, token, self._lease)
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
        shared.set_result(claim.found)
        # from here to the fill's start nothing awaits: the claim cannot be lost on the way
        return Looked(claim.found, claimed(claim.lock, token))

    async def _join(self, key: EntryKey, pending: asyncio.Future[Lookup]) -> Lookup:
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not pending.cancelled() or (current is not None and current.cancelling()):
                raise
        # the first request went away mid-lookup: a plain lookup, and the fill claims the lock
        return await self._store.lookup(key)
