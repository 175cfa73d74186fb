"""The two ports the lifecycle drives, Store and Upstream, and the errors each may raise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from proxy.core.causes import StoreCause, UpstreamCause
from proxy.core.headers import Header
from proxy.core.model import Entry, EntryKey, Lookup


class StoreError(Exception):
    """The store failed or was too slow; callers degrade to the upstream.

    `cause` says why (proxy/core/causes.py) and `detail` in the store's own words, both named
    where the store's error is mapped (store/causes.py), for the metric, the log and /readyz.
    """

    def __init__(
        self, message: str = "", cause: StoreCause = StoreCause.OTHER, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.detail = detail


class StoreRefused(StoreError):
    """The store answered but refused a write (out of memory under `noeviction`, unable to
    persist): it is up, so reads should go on."""


class ForeignValue(StoreError):
    """A value of another type (not ours) sits under one of our keys: this call failed, the
    store is fine, and the next save replaces the value."""


class StoreUnavailable(StoreError):
    """The store is known to be down (the breaker is open); no call was attempted."""


@dataclass(frozen=True, slots=True)
class KeptCuts:
    """The fail-safe cuts a store keeps: entries stored before `expired_before` have expired;
    `recent` are the cuts of the last seconds, scope -> time."""

    expired_before: float
    recent: dict[str, float]


class FillLock(Enum):
    """What a lookup did about the key's fill lock (Store.lookup_or_lead)."""

    # an entry is stored (fresh or stale), or the store could not judge what is: no lock asked for
    NOT_ASKED = "not-asked"
    # nothing servable is stored, and the caller now holds the lock under its token
    LED = "led"
    # nothing servable is stored, and another filler holds the lock: the caller is its waiter
    HELD = "held"


@dataclass(frozen=True, slots=True)
class Claim:
    """A lookup and what it did about the fill lock: LED or HELD only when `found.entry` is None."""

    found: Lookup
    lock: FillLock


class Store(Protocol):
    """Where entries live. Every method is bounded in time or raises StoreError."""

    def peek(self, key: EntryKey) -> Entry | None:
        """An entry the store can answer under `key` at once, with no I/O (an in-process tier
        or store), else None: then `lookup` asks. The hit path's first question."""
        ...

    async def lookup(self, key: EntryKey) -> Lookup:
        """The current entry under `key` (None when absent, expired, corrupt or invalidated)."""
        ...

    async def lookup_or_lead(self, key: EntryKey, token: str, lease: float) -> Claim:
        """lookup, and begin_fill in the same store call when no entry of the run's current
        generation is stored: a cold miss then costs one round trip before its fetch, not two.

        A stored entry (fresh or stale) comes back NOT_ASKED: a hit takes no lock. LED: the
        caller holds the lock under `token` for `lease` seconds and must end_fill on every path;
        HELD: another filler holds it, and the caller is flagged as its waiter (as begin_fill
        does). A call that raises leaves the caller holding nothing: the store gives back, best
        effort, a lock it may have taken before the call failed or was cancelled.
        """
        ...

    async def save(self, key: EntryKey, entry: Entry) -> None:
        """Keep `entry` for `entry.kept_for` seconds; `entry.generation` is the one looked up."""
        ...

    async def invalidate_run(self, run_id: str, keep_for: float) -> int:
        """Make every entry of the run, in every scope and route, a miss; O(1) in Redis.

        `keep_for` is the longest an entry lives: the generation must outlive them all. Returns
        how many entries were dropped when the store can tell (else 0).
        """
        ...

    async def declare_cut(self, scope: str, at: float, window: float, keep_for: float) -> None:
        """Keep the fail-safe cut of `scope` at `at` (proxy/core/cuts.py) while it matters one by
        one (`window` seconds after the newest), fold older ones into the expired mark, keep
        both `keep_for` seconds, and announce the cut to every replica; O(1)."""
        ...

    async def read_cuts(self) -> KeptCuts:
        """The cuts kept, for a replica that (re)joins the announcements."""
        ...

    async def begin_fill(self, key: EntryKey, token: str, lease: float) -> bool:
        """Take the fill lock of `key` for `lease` seconds (True), or flag ourselves as a waiter."""
        ...

    async def lead_fill(self, key: EntryKey, token: str, lease: float) -> Lookup | None:
        """begin_fill and, when we lead, the entry under `key` now, in one store call: a replica
        may have stored it between our lookup and the lock. None when another replica leads."""
        ...

    async def end_fill(self, key: EntryKey, token: str, entry: Entry | None) -> None:
        """Store `entry` (if any), release the lock if `token` still holds it, wake waiters."""
        ...

    def watch_fill(self, key: EntryKey) -> AbstractContextManager[asyncio.Future[None] | None]:
        """While open: a future resolved when a replica announces a fill of `key`, or None."""
        ...

    async def cooldown_until(self, bucket: str) -> float:
        """The wall-clock time until which `bucket` must not call the upstream (0 if none)."""
        ...

    async def start_cooldown(self, bucket: str, until: float, ttl: float) -> None:
        """Share with every replica: `bucket` cools down until `until` (`ttl` seconds from now)."""
        ...

    async def ping(self) -> None:
        """Raise StoreError unless the store answers now."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class WatchedStore(Store, Protocol):
    """A Store behind the breaker (store/guard.py), which also knows how the store is doing."""

    @property
    def writes_refused(self) -> bool:
        """True for a while after the store refused a write (StoreRefused): what it holds is
        still served, but nothing new can be stored."""
        ...


class UpstreamError(Exception):
    """The upstream could not answer; `label` names the failure in the upstream requests metric,
    `cause` says why (proxy/core/causes.py) and `detail` in the failure's own words (never a
    credential, a header value or a query)."""

    label = "unreachable"

    def __init__(self, detail: str = "", cause: UpstreamCause = UpstreamCause.OTHER) -> None:
        super().__init__(f"{cause}: {detail}" if detail else str(cause))
        self.cause = cause
        self.detail = detail


class UpstreamUnreachable(UpstreamError):
    """Connecting to the upstream, or reading its answer, failed."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured timeout."""

    label = "timeout"


@dataclass(slots=True)
class UpstreamRequest:
    """What to send upstream: the client's raw path and query, with headers already filtered."""

    method: str
    raw_path: bytes
    query_string: bytes
    headers: Sequence[Header]
    body: AsyncIterator[bytes] | None = None


@dataclass(slots=True)
class FetchedResponse:
    """An upstream answer read up to a size bound.

    `body` is the whole body when `complete`; otherwise it is the first part and `rest` yields
    the remainder, which the caller must drain or `aclose`.
    """

    status: int
    headers: list[Header]
    body: bytes
    complete: bool = True
    rest: AsyncGenerator[bytes, None] | None = None
    elapsed: float = 0.0


@dataclass(slots=True)
class StreamedResponse:
    """An upstream answer to relay as it arrives; `aclose` must be awaited when done."""

    status: int
    headers: list[Header]
    chunks: AsyncIterator[bytes]
    closer: _Closer = field(repr=False)

    async def aclose(self) -> None:
        await self.closer()


class _Closer(Protocol):
    async def __call__(self) -> None: ...


class Upstream(Protocol):
    """The Lunary API, behind whatever transport. Raises only UpstreamError subclasses."""

    async def fetch(self, request: UpstreamRequest, max_body: int) -> FetchedResponse:
        """Send `request` and read up to `max_body` bytes of the answer into memory."""
        ...

    async def stream(self, request: UpstreamRequest) -> StreamedResponse:
        """Send `request` (streaming its body) and return the answer unread."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
