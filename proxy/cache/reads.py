"""The one driver of a cached read: recv -> hash -> lookup -> hit | stale | fill -> deliver.

It does I/O only through the Store and Upstream ports and reads the clock once per request.
Fills are coalesced: one task per key in the process (SingleFlight), and one fetch per key across
replicas (the store's fill lock); stale entries are answered at once while one background
refresh runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial

from proxy.cache import errors, replies
from proxy.cache.coalesce import SingleFlight
from proxy.cache.cooldowns import Cooldowns, RateLimited
from proxy.cache.ports import (
    FetchedResponse,
    StoreError,
    StoreRefused,
    Upstream,
    UpstreamError,
    UpstreamRequest,
    WatchedStore,
)
from proxy.cache.replies import Reply
from proxy.core.deadlines import Deadlines
from proxy.core.headers import (
    Header,
    client_directives,
    end_to_end,
    first_forwarded_address,
    first_value,
    forwarded_for,
)
from proxy.core.model import (
    CachedRoute,
    CacheResult,
    DontStore,
    Entry,
    EntryKey,
    Freshness,
    Judgement,
    Lookup,
    Reason,
)
from proxy.core.paths import normalise_query
from proxy.core.policy import Lifetimes, cache_status, entry_key, judge, make_etag, storage_decision
from proxy.core.scope import ScopeHasher
from proxy.ops.metrics import Metrics
from proxy.ops.tasks import TaskSet

# Request headers a cache fill never forwards: conditionals and cache controls are ours to
# answer, and the response must not depend on anything outside the key (Cookie is not in it).
FILL_DROP = frozenset(
    {
        b"host",
        b"content-length",
        b"accept-encoding",
        b"cache-control",
        b"pragma",
        b"cookie",
        b"expect",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"if-range",
        b"range",
        b"x-forwarded-for",
    }
)
IDENTITY = (b"accept-encoding", b"identity")
# How often a waiter on another replica's fill looks at the store even without a notice: a
# safety net for a lost pub/sub message, not the wake-up path.
RECHECK_INTERVAL = 0.5
# After a background refresh failed (Lunary down, 5xx, 429), the key's stale entry is served
# without another refresh for this long: else every read during an outage sends one more
# request to a failing upstream. Bounded in keys, as everything a client can grow.
REFRESH_RETRY_AFTER = 2.0
MAX_REFRESH_BACKOFFS = 10_000


@dataclass(slots=True)
class ReadRequest:
    """A GET or HEAD on a cached route, as the server received it."""

    route: CachedRoute
    method: str
    raw_path: bytes
    query_string: bytes
    headers: list[Header]
    client_host: str | None


@dataclass(slots=True)
class _Facts:
    """The request headers the lifecycle reads, gathered in one pass."""

    authorization: bytes | None = None
    api_key: bytes | None = None
    if_none_match: bytes | None = None
    forwarded: list[bytes] = field(default_factory=list)
    cache_control: list[bytes] = field(default_factory=list)
    pragma: list[bytes] = field(default_factory=list)

    @classmethod
    def read(cls, headers: list[Header]) -> _Facts:
        facts = cls()
        for name, value in headers:
            if name == b"authorization":
                facts.authorization = _joined(facts.authorization, value)
            elif name == b"x-api-key":
                facts.api_key = _joined(facts.api_key, value)
            elif name == b"if-none-match":
                # repeated fields are one comma-separated list (RFC 9110 5.3)
                facts.if_none_match = (
                    value if facts.if_none_match is None else facts.if_none_match + b", " + value
                )
            elif name == b"x-forwarded-for":
                facts.forwarded.append(value)
            elif name == b"cache-control":
                facts.cache_control.append(value)
            elif name == b"pragma":
                facts.pragma.append(value)
        return facts


def _joined(existing: bytes | None, value: bytes) -> bytes:
    # repeated credential headers all count: both values go into the scope
    return value if existing is None else existing + b"\n" + value


@dataclass(frozen=True, slots=True)
class _Fill:
    """One upstream fetch for a key: what to send, where to store, which rate bucket it spends."""

    key: EntryKey
    request: UpstreamRequest
    bucket: str
    generation: int
    use_store: bool
    now: float
    # when the entry this request saw was stored (0: none): only a newer one answers it, so a
    # `no-cache` refresh is never handed back the entry it asked to replace
    seen: float = 0.0


@dataclass(slots=True)
class _Filled:
    """A fill's outcome. `fetched` is None when another replica fetched and stored `entry`."""

    fetched: FetchedResponse | None
    entry: Entry | None
    stored: bool = False
    not_stored: Reason | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """How the leader of a fill will answer: what a request joining it needs to answer alike."""

    generation: int
    use_store: bool
    bucket: str
    stale: tuple[Entry, Judgement] | None
    result: CacheResult
    fwd: str
    detail: Reason | None = None


@dataclass(frozen=True, slots=True)
class Coordination:
    """How long fills may hold the cross-replica lock, and waiters may wait for another's fill."""

    lock_lease: float
    coalesce_timeout: float


class CachedReads:
    """Serves GET/HEAD on the cached routes from the store, filling misses from the upstream."""

    def __init__(
        self,
        store: WatchedStore,
        upstream: Upstream,
        hasher: ScopeHasher,
        lifetimes: Lifetimes,
        metrics: Metrics,
        tasks: TaskSet,
        cooldowns: Cooldowns,
        coordination: Coordination,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._hasher = hasher
        self._lifetimes = lifetimes
        self._metrics = metrics
        self._cooldowns = cooldowns
        self._coordination = coordination
        self._clock = clock
        self._fills: SingleFlight[EntryKey, _Filled, _Plan] = SingleFlight(tasks)
        self._lookups: dict[EntryKey, asyncio.Future[Lookup]] = {}
        self._tasks = tasks
        self._refreshes: SingleFlight[EntryKey, _Filled, None] = SingleFlight(tasks)
        # key -> when a refresh may run again; a flood of failing keys is forgotten whole
        self._refresh_failed: Deadlines[EntryKey] = Deadlines(
            MAX_REFRESH_BACKOFFS, MAX_REFRESH_BACKOFFS
        )

    def forget_run(self, run_id: str) -> None:
        """After a write to `run_id`: fills and lookups already under way began before it, so
        no request arriving from now on may join them."""

        self._forget(lambda key: key.run_id == run_id)

    def forget_runs(self, run_ids: Collection[str]) -> None:
        """forget_run for many runs, in one pass over what is under way."""
        if len(run_ids) == 1:
            self.forget_run(next(iter(run_ids)))
        elif run_ids:
            self._forget(lambda key: key.run_id in run_ids)

    def forget_all(self) -> None:
        """After a write nobody could read (a fail-safe cut, proxy/core/cuts.py): it may have
        changed any run, so no request from now on joins a fill or lookup under way."""
        self._forget(lambda key: True)

    def _forget(self, matches: Callable[[EntryKey], bool]) -> None:
        self._fills.forget(matches)
        self._refreshes.forget(matches)
        for key in [key for key in self._lookups if matches(key)]:
            del self._lookups[key]

    def scope_of(self, headers: list[Header]) -> str:
        """The credential scope of a request, read as a cached read of it would read it."""
        facts = _Facts.read(headers)
        return self._hasher.scope(facts.authorization, facts.api_key)

    async def serve(self, request: ReadRequest) -> Reply:
        now = self._clock()
        facts = _Facts.read(request.headers)
        wants = client_directives(facts.cache_control, facts.pragma)
        key = entry_key(
            request.route,
            self._hasher.scope(facts.authorization, facts.api_key),
            normalise_query(request.query_string),
        )
        flight = None if wants.no_store else self._fills.peek(key)
        if flight is not None:
            # a fill of this key is under way here: join it without a store round trip, so a
            # herd costs the store one lookup per process, not one per request
            plan = flight[1]
            fill = self._fill_for(
                request, facts, key, now, plan.generation, use_store=plan.use_store
            )
            reply = await self._coalesced_reply(fill, plan)
        elif wants.no_store:
            fill = self._fill_for(request, facts, key, now, generation=0, use_store=False)
            plan = _Plan(
                0, False, fill.bucket, None, CacheResult.BYPASS, "bypass", Reason.CLIENT_NO_STORE
            )
            reply = await self._own_fill_reply(fill, plan)
        else:
            reply = await self._read_through(request, facts, key, now, refresh=wants.no_cache)
        self._metrics.request(request.route.kind.value, reply.cache)
        if facts.if_none_match is not None:
            reply = replies.not_modified_if_matching(reply, facts.if_none_match)
        return reply

    async def _read_through(
        self, request: ReadRequest, facts: _Facts, key: EntryKey, now: float, *, refresh: bool
    ) -> Reply:
        try:
            found = await self._lookup(key)
        except StoreError:
            fill = self._fill_for(request, facts, key, now, generation=0, use_store=False)
            plan = _Plan(
                0, False, fill.bucket, None, CacheResult.BYPASS, "bypass", Reason.STORE_UNAVAILABLE
            )
            return await self._coalesced_reply(fill, plan)
        stale: tuple[Entry, Judgement] | None = None
        if found.entry is not None:
            judgement = judge(found.entry, now)
            if judgement.freshness is Freshness.FRESH and not refresh:
                return replies.hit(found.entry, judgement)
            if judgement.freshness is not Freshness.EXPIRED and found.entry.status == 200:
                stale = (found.entry, judgement)
        seen = found.entry.stored_at if found.entry is not None else 0.0
        fill = self._fill_for(request, facts, key, now, found.generation, use_store=True, seen=seen)
        # a store refusing writes could keep no refresh, and the stale entry would be served
        # until its window ends with Lunary healthy: it is fetched now (stale if that fails)
        if stale is not None and not refresh and not self._store.writes_refused:
            self._refresh_in_background(fill)
            return replies.stale(*stale, Reason.REVALIDATING)
        fwd = "request" if refresh else ("stale" if found.entry is not None else "miss")
        plan = _Plan(found.generation, True, fill.bucket, stale, CacheResult.MISS, fwd)
        return await self._coalesced_reply(fill, plan)

    async def _lookup(self, key: EntryKey) -> Lookup:
        """One store lookup per key at a time in this process: concurrent requests share it.

        A herd arrives all at once, before any fill is in flight to join; sharing the lookup
        keeps it to one store round trip per key and process instead of one per request. The
        first request looks up inline (a task per hit would cost an event-loop turn) and hands
        the answer to the others through a future; if it is cancelled, they look up themselves.
        """
        pending = self._lookups.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not pending.cancelled() or (current is not None and current.cancelling()):
                    raise
            return await self._store.lookup(key)  # the first request went away mid-lookup
        shared: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()
        self._lookups[key] = shared
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
            if self._lookups.get(key) is shared:
                del self._lookups[key]
        shared.set_result(found)
        return found

    # -- fills ----------------------------------------------------------------------------

    async def _coalesced_reply(self, fill: _Fill, plan: _Plan) -> Reply:
        """Join the fill in flight for this key, or lead one; fall back to our own on timeout."""
        stale = plan.stale
        in_flight = self._fills.peek(fill.key)
        # a 429 (or a cooldown) belongs to the leader's rate bucket, not necessarily to ours
        same_bucket = in_flight is None or in_flight[1].bucket == fill.bucket
        task, leading = self._fills.join(fill.key, lambda: self._fill(fill, wait=True), plan)
        try:
            if leading:
                filled = await self._shielded_for_leader(task)
            else:
                self._metrics.coalesced("joined")
                filled = await asyncio.wait_for(
                    asyncio.shield(task), self._coordination.coalesce_timeout
                )
        except TimeoutError:
            self._metrics.coalesced("timeout")
            return await self._own_fill_reply(fill, plan, coordinate=False)
        except (UpstreamError, RateLimited) as exc:
            if isinstance(exc, RateLimited) and not same_bucket:
                return await self._own_fill_reply(fill, plan, coordinate=False)
            return self._failed(exc, stale, plan.result)
        if stale is not None and _upstream_failed(filled):
            return await _stale_instead(filled, stale, close=leading)
        if leading:
            return self._reply_for_leader(filled, plan)
        shared = self._shared(filled)
        if shared is None:  # nothing another request can reuse: fetch for ourselves
            self._metrics.coalesced("refetch")
            return await self._own_fill_reply(fill, plan)
        return replies.collapsed(shared, plan.result, plan.fwd, plan.detail)

    async def _own_fill_reply(self, fill: _Fill, plan: _Plan, *, coordinate: bool = True) -> Reply:
        try:
            filled = await self._fill(fill, wait=True, coordinate=coordinate)
        except (UpstreamError, RateLimited) as exc:
            return self._failed(exc, plan.stale, plan.result)
        if plan.stale is not None and _upstream_failed(filled):
            return await _stale_instead(filled, plan.stale, close=True)
        return self._reply_for_leader(filled, plan)

    async def _fill(self, fill: _Fill, *, wait: bool, coordinate: bool = True) -> _Filled:
        """Fetch and store, unless another replica already is: then (if `wait`) take its entry.

        `coordinate=False` skips the cross-replica lock: for a request that already waited its
        coalesce timeout and must now fetch on its own, at once.
        """
        await self._check_cooldown(fill)
        token: str | None = None
        followed_another = False
        if fill.use_store and coordinate:
            with self._store.watch_fill(fill.key) as landed:
                token = mine = secrets.token_hex(8)
                current: Lookup | None = None
                try:
                    current = await self._store.lead_fill(
                        fill.key, mine, self._coordination.lock_lease
                    )
                    leading = current is not None
                except StoreError:
                    leading, token = True, None  # cannot coordinate: in-process single-flight holds
                if not leading:
                    if not wait:
                        return _Filled(None, None)
                    followed = await self._follow(fill, mine, landed)
                    followed_another = True
                    if isinstance(followed, Entry):
                        self._metrics.coalesced("replica")
                        return _Filled(None, followed)
                    if not followed:
                        self._metrics.coalesced("timeout")
                        token = None  # the lock is still another replica's: fetch on our own
                elif (stored_meanwhile := self._answering(current, fill)) is not None:
                    # another replica stored the entry between our lookup and the lock: the
                    # store read it in the same call that gave us the lock
                    await self._release(fill.key, mine)
                    self._metrics.coalesced("replica")
                    return _Filled(None, stored_meanwhile)
        try:
            if followed_another:
                await self._check_cooldown(fill)  # the leader we waited for may have met a 429
            fetched = await self._fetch(fill)
        except BaseException:
            if token is not None:
                await self._release(fill.key, token)
            raise
        return await self._keep(fill, fetched, token)

    async def _check_cooldown(self, fill: _Fill) -> None:
        try:
            await self._cooldowns.check(fill.bucket, self._clock())
        except RateLimited:
            self._metrics.cooldown_rejection()
            raise

    def _answering(self, found: Lookup | None, fill: _Fill) -> Entry | None:
        """The entry found, if it is fresh and newer than the one this fill's request saw."""
        entry = None if found is None else found.entry
        if entry is None or entry.stored_at <= fill.seen or judge(entry, self._clock()).ttl <= 0:
            return None
        return entry

    async def _fetch(self, fill: _Fill) -> FetchedResponse:
        started = time.perf_counter()
        try:
            fetched = await self._upstream.fetch(fill.request, self._lifetimes.max_entry_bytes)
        except UpstreamError as exc:
            self._metrics.upstream("fill", exc.label, time.perf_counter() - started)
            raise
        self._metrics.upstream("fill", fetched.status, fetched.elapsed)
        if await self._cooldowns.learn(fetched.status, fetched.headers, fill.bucket, fill.now):
            self._metrics.cooldown_started()
        return fetched

    async def _keep(self, fill: _Fill, fetched: FetchedResponse, token: str | None) -> _Filled:
        """Store what may be stored, release the fill lock and wake waiters, in one store call."""
        decision = storage_decision(
            fetched.status, fetched.headers, fetched.body, fetched.complete, self._lifetimes
        )
        entry: Entry | None = None
        not_stored: Reason | None = None
        if isinstance(decision, DontStore):
            not_stored = decision.reason
            self._metrics.not_stored(not_stored)
        else:
            entry = _entry_of(
                fetched, fill.now, decision.fresh_for, decision.stale_for, fill.generation
            )
        if not fill.use_store:
            return _Filled(fetched, entry, stored=False, not_stored=not_stored)
        try:
            if token is not None:
                await self._store.end_fill(fill.key, token, entry)
            elif entry is not None:
                await self._store.save(fill.key, entry)
        except StoreError as exc:
            if entry is None:  # only the lock's release failed: the policy's reason stands
                return _Filled(fetched, entry, stored=False, not_stored=not_stored)
            refused = isinstance(exc, StoreRefused)
            reason = Reason.STORE_REFUSED if refused else Reason.STORE_UNAVAILABLE
            self._metrics.not_stored(reason)
            return _Filled(fetched, entry, stored=False, not_stored=reason)
        return _Filled(fetched, entry, stored=entry is not None, not_stored=not_stored)

    async def _release(self, key: EntryKey, token: str) -> None:
        with contextlib.suppress(StoreError):
            await self._store.end_fill(key, token, None)

    async def _follow(
        self, fill: _Fill, token: str, landed: asyncio.Future[None] | None
    ) -> Entry | bool:
        """Wait, bounded, for the replica holding the fill lock.

        Returns its fresh entry; or True once the lock came free and is ours (the leader stored
        nothing, died, or Redis lost the lock); or False when we should fetch without the lock.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._coordination.coalesce_timeout
        first = True
        try:
            while True:
                # the lock is released in the same step that stores the entry, so look first
                stored = self._answering(await self._store.lookup(fill.key), fill)
                if stored is not None:
                    return stored
                lease = self._coordination.lock_lease
                if not first and await self._store.begin_fill(fill.key, token, lease):
                    return True
                first = False
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                pause = min(remaining, RECHECK_INTERVAL)
                if landed is None or landed.done():
                    await asyncio.sleep(pause)  # a notice comes once: after it, recheck slowly
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(landed), pause)
        except StoreError:
            return False

    def _refresh_in_background(self, fill: _Fill) -> None:
        """One refresh per key: skipped when this process or another replica already runs one,
        and for REFRESH_RETRY_AFTER after one failed."""
        if self._refreshes.running(fill.key):
            return
        if fill.now < self._refresh_failed.until(fill.key):
            return
        task, _ = self._refreshes.join(fill.key, lambda: self._fill(fill, wait=False), None)
        self._metrics.background_refresh()
        task.add_done_callback(partial(self._after_refresh, fill.key))

    def _after_refresh(self, key: EntryKey, task: asyncio.Task[_Filled]) -> None:
        """Releases a body nobody relays; after a failure, holds the key's next refresh back."""
        self._close_unread_body(task)
        if task.cancelled():
            return
        failure = task.exception()
        if failure is None:
            if not _upstream_failed(task.result()):
                return
        elif not isinstance(failure, UpstreamError | RateLimited):
            return
        now = self._clock()
        self._refresh_failed.set(key, now + REFRESH_RETRY_AFTER, now)

    async def _shielded_for_leader(self, task: asyncio.Task[_Filled]) -> _Filled:
        """Await our own fill; if our client goes away, the fill still completes and is stored."""
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._close_unread_body)
            raise

    def _close_unread_body(self, task: asyncio.Task[_Filled]) -> None:
        """A fill nobody will relay may hold an open streamed body: release its connection."""
        if task.cancelled() or task.exception() is not None:
            return
        fetched = task.result().fetched
        if fetched is not None and fetched.rest is not None:
            with contextlib.suppress(RuntimeError):  # shutting down: the pool closes it anyway
                self._tasks.spawn(fetched.rest.aclose(), name="close-unread-body")

    def _fill_for(
        self,
        request: ReadRequest,
        facts: _Facts,
        key: EntryKey,
        now: float,
        generation: int,
        *,
        use_store: bool,
        seen: float = 0.0,
    ) -> _Fill:
        headers = end_to_end(request.headers, FILL_DROP)
        headers.append(IDENTITY)
        chain = forwarded_for(facts.forwarded, request.client_host)
        if chain is not None:
            headers.append((b"x-forwarded-for", chain))
        upstream_request = UpstreamRequest("GET", request.raw_path, request.query_string, headers)
        bucket = first_forwarded_address(chain)
        return _Fill(key, upstream_request, bucket, generation, use_store, now, seen)

    # -- replies --------------------------------------------------------------------------

    def _reply_for_leader(self, filled: _Filled, plan: _Plan) -> Reply:
        if filled.fetched is None:
            if filled.entry is None:
                raise RuntimeError("a foreground fill always fetches or waits")
            return replies.collapsed(filled.entry, plan.result, plan.fwd, plan.detail)
        status_header = cache_status(
            fwd=plan.fwd,
            fwd_status=filled.fetched.status,
            stored=filled.stored,
            detail=plan.detail or filled.not_stored,
        )
        return replies.relayed(filled.fetched, plan.result, status_header)

    @staticmethod
    def _shared(filled: _Filled) -> Entry | None:
        """What a joined waiter may be given: the entry, or a complete answer without cookies."""
        if filled.entry is not None:
            return filled.entry
        fetched = filled.fetched
        if fetched is None or not fetched.complete:
            return None
        if fetched.status == 429:
            # rate limits are per bucket: the waiter asks for itself, and its own cooldown
            # answers it (with Retry-After) if it shares the leader's bucket
            return None
        if first_value(fetched.headers, b"set-cookie") is not None:
            return None
        return _entry_of(fetched, stored_at=0.0, fresh_for=0.0, stale_for=0.0)

    def _failed(
        self,
        exc: UpstreamError | RateLimited,
        stale: tuple[Entry, Judgement] | None,
        result: CacheResult,
    ) -> Reply:
        """Stale-if-error: a stale entry beats an error; else 429 (cooldown), 502 or 504."""
        if isinstance(exc, RateLimited):
            if stale is not None:
                return replies.stale(*stale, Reason.COOLDOWN)
            return replies.rate_limited(exc.remaining, result)
        if stale is not None:
            return replies.stale(*stale, Reason.UPSTREAM_ERROR)
        return replies.failure(errors.upstream_failure(exc), result, Reason.UPSTREAM_ERROR)


def _upstream_failed(filled: _Filled) -> bool:
    """A 5xx or 429 answer: stale-if-error applies to it as to a connection failure."""
    return filled.fetched is not None and (
        filled.fetched.status >= 500 or filled.fetched.status == 429
    )


async def _stale_instead(filled: _Filled, stale: tuple[Entry, Judgement], *, close: bool) -> Reply:
    fetched = filled.fetched
    assert fetched is not None
    if close and fetched.rest is not None:
        await fetched.rest.aclose()
    return replies.stale(*stale, Reason.UPSTREAM_ERROR, fetched.status)


def _entry_of(
    fetched: FetchedResponse,
    stored_at: float,
    fresh_for: float,
    stale_for: float,
    generation: int = 0,
) -> Entry:
    """The entry form of an upstream answer: what the store keeps, and what waiters share."""
    content_type = first_value(fetched.headers, b"content-type") or b""
    return Entry(
        status=fetched.status,
        content_type=content_type.decode("latin-1"),
        body=fetched.body,
        etag=make_etag(fetched.body),
        stored_at=stored_at,
        fresh_for=fresh_for,
        stale_for=stale_for,
        generation=generation,
    )
