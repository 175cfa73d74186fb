"""The one driver of a cached read: recv -> hash -> lookup -> hit | fetch -> store -> deliver.

It does I/O only through the Store and Upstream ports, and reads the clock once per request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from proxy import errors
from proxy.headers import Header, client_directives, end_to_end, forwarded_for, if_none_match_hits
from proxy.metrics import Metrics
from proxy.model import (
    CachedRoute,
    CacheResult,
    DontStore,
    Entry,
    EntryKey,
    Freshness,
    Judgement,
    Reason,
    StoreFor,
)
from proxy.paths import normalise_query
from proxy.policy import Lifetimes, cache_status, entry_key, judge, make_etag, storage_decision
from proxy.ports import (
    FetchedResponse,
    Store,
    StoreError,
    Upstream,
    UpstreamError,
    UpstreamRequest,
    UpstreamTimeout,
)
from proxy.scope import ScopeHasher

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
# Upstream headers not relayed on a miss: the length is ours to set, the validator is ours.
RELAY_DROP = frozenset({b"content-length", b"etag", b"last-modified"})
IDENTITY = (b"accept-encoding", b"identity")


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
class Reply:
    """What to send back: `body` first, then `rest` (if streaming); `cache` is the metric label."""

    status: int
    headers: list[Header]
    body: bytes = b""
    rest: AsyncIterator[bytes] | None = None
    cache: str = ""
    upstream_status: int | None = None
    detail: Reason | None = None


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
                facts.if_none_match = _joined(facts.if_none_match, value)
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


@dataclass(slots=True)
class _Stale:
    entry: Entry
    judgement: Judgement


class CachedReads:
    """Serves GET/HEAD on the cached routes from the store, filling misses from the upstream."""

    def __init__(
        self,
        store: Store,
        upstream: Upstream,
        hasher: ScopeHasher,
        lifetimes: Lifetimes,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._hasher = hasher
        self._lifetimes = lifetimes
        self._metrics = metrics
        self._clock = clock

    async def serve(self, request: ReadRequest) -> Reply:
        now = self._clock()
        facts = _Facts.read(request.headers)
        wants = client_directives(facts.cache_control, facts.pragma)
        key = entry_key(
            request.route,
            self._hasher.scope(facts.authorization, facts.api_key),
            normalise_query(request.query_string),
        )
        if wants.no_store:
            reply = await self._forward(request, facts, key, now, bypass=Reason.CLIENT_NO_STORE)
        else:
            reply = await self._read_through(request, facts, key, now, refresh=wants.no_cache)
        self._metrics.request(request.route.kind.value, reply.cache)
        if reply.status == 200 and facts.if_none_match is not None:
            reply = _not_modified_if_matching(reply, facts.if_none_match)
        return reply

    async def _read_through(
        self, request: ReadRequest, facts: _Facts, key: EntryKey, now: float, *, refresh: bool
    ) -> Reply:
        try:
            found = await self._store.lookup(key)
        except StoreError:
            return await self._forward(request, facts, key, now, bypass=Reason.STORE_UNAVAILABLE)
        stale: _Stale | None = None
        if found.entry is not None:
            judgement = judge(found.entry, now)
            if judgement.freshness is Freshness.FRESH and not refresh:
                return _hit(found.entry, judgement)
            if judgement.freshness is not Freshness.EXPIRED and found.entry.status == 200:
                stale = _Stale(found.entry, judgement)  # kept for stale-if-error
        return await self._forward(
            request, facts, key, now, generation=found.generation, stale=stale, refresh=refresh
        )

    async def _forward(
        self,
        request: ReadRequest,
        facts: _Facts,
        key: EntryKey,
        now: float,
        *,
        generation: int = 0,
        stale: _Stale | None = None,
        refresh: bool = False,
        bypass: Reason | None = None,
    ) -> Reply:
        """Fetch from upstream; store the answer unless bypassing; fall back to `stale` on error."""
        started = time.perf_counter()
        try:
            fetched = await self._upstream.fetch(
                self._fill_request(request, facts), self._lifetimes.max_entry_bytes
            )
        except UpstreamError as exc:
            timed_out = isinstance(exc, UpstreamTimeout)
            self._metrics.upstream(
                "fill", "timeout" if timed_out else "unreachable", time.perf_counter() - started
            )
            if stale is not None:
                return _serve_stale(stale, None)
            failure = errors.upstream_timeout() if timed_out else errors.upstream_unreachable()
            result = CacheResult.BYPASS if bypass else CacheResult.MISS
            return _error_reply(failure, result)
        self._metrics.upstream("fill", fetched.status, fetched.elapsed)
        if stale is not None and (fetched.status >= 500 or fetched.status == 429):
            await _discard(fetched)
            return _serve_stale(stale, fetched.status)
        if bypass is not None:
            return _relay(
                fetched,
                CacheResult.BYPASS,
                cache_status(fwd="bypass", fwd_status=fetched.status, detail=bypass),
            )
        decision = storage_decision(
            fetched.status, fetched.headers, fetched.body, fetched.complete, self._lifetimes
        )
        forwarded_because = "request" if refresh else ("stale" if stale else "miss")
        if isinstance(decision, DontStore):
            self._metrics.not_stored(decision.reason)
            return _relay(
                fetched,
                CacheResult.MISS,
                cache_status(
                    fwd=forwarded_because, fwd_status=fetched.status, detail=decision.reason
                ),
            )
        stored = await self._save(key, fetched, decision, generation, now)
        return _relay(
            fetched,
            CacheResult.MISS,
            cache_status(
                fwd=forwarded_because,
                fwd_status=fetched.status,
                stored=stored,
                detail=None if stored else Reason.STORE_UNAVAILABLE,
            ),
        )

    async def _save(
        self,
        key: EntryKey,
        fetched: FetchedResponse,
        decision: StoreFor,
        generation: int,
        now: float,
    ) -> bool:
        entry = Entry(
            status=fetched.status,
            content_type=_content_type(fetched.headers),
            body=fetched.body,
            etag=make_etag(fetched.body),
            stored_at=now,
            fresh_for=decision.fresh_for,
            stale_for=decision.stale_for,
            generation=generation,
        )
        try:
            await self._store.save(key, entry)
        except StoreError:
            return False
        return True

    def _fill_request(self, request: ReadRequest, facts: _Facts) -> UpstreamRequest:
        headers = end_to_end(request.headers, FILL_DROP)
        headers.append(IDENTITY)
        chain = forwarded_for(facts.forwarded, request.client_host)
        if chain is not None:
            headers.append((b"x-forwarded-for", chain))
        return UpstreamRequest("GET", request.raw_path, request.query_string, headers)


def _hit(entry: Entry, judgement: Judgement) -> Reply:
    negative = entry.status != 200
    headers = _entry_headers(entry)
    headers += [
        (b"x-cache", b"HIT"),
        (b"age", b"%d" % judgement.age),
        (
            b"cache-status",
            cache_status(hit=True, ttl=judgement.ttl, detail=Reason.NEGATIVE if negative else None),
        ),
    ]
    return Reply(entry.status, headers, entry.body, cache="negative_hit" if negative else "hit")


def _serve_stale(stale: _Stale, upstream_status: int | None) -> Reply:
    headers = _entry_headers(stale.entry)
    headers += [
        (b"x-cache", b"STALE"),
        (b"age", b"%d" % stale.judgement.age),
        (
            b"cache-status",
            cache_status(
                fwd="stale",
                fwd_status=upstream_status,
                ttl=stale.judgement.ttl,
                detail=Reason.UPSTREAM_ERROR,
            ),
        ),
    ]
    return Reply(
        stale.entry.status,
        headers,
        stale.entry.body,
        cache="stale",
        upstream_status=upstream_status,
        detail=Reason.UPSTREAM_ERROR,
    )


def _entry_headers(entry: Entry) -> list[Header]:
    headers: list[Header] = [(b"content-type", entry.content_type.encode("latin-1"))]
    if entry.status == 200:
        headers.append((b"etag", entry.etag.encode("ascii")))
    return headers


def _relay(fetched: FetchedResponse, result: CacheResult, status_header: bytes) -> Reply:
    """A fresh upstream answer: its end-to-end headers, our validator and cache headers."""
    headers = [(n, v) for n, v in fetched.headers if n not in RELAY_DROP]
    if fetched.status == 200 and fetched.complete:
        headers.append((b"etag", make_etag(fetched.body).encode("ascii")))
    headers += [(b"x-cache", result.value.encode()), (b"cache-status", status_header)]
    return Reply(
        fetched.status,
        headers,
        fetched.body,
        rest=fetched.rest,
        cache=result.value.lower(),
        upstream_status=fetched.status,
    )


def _error_reply(failure: errors.ProxyErrorReply, result: CacheResult) -> Reply:
    headers = [
        (b"content-type", errors.JSON_TYPE),
        (b"x-cache", result.value.encode()),
        (b"cache-status", cache_status(fwd="miss", detail=Reason.UPSTREAM_ERROR)),
    ]
    return Reply(
        failure.status,
        headers,
        failure.body(),
        cache=result.value.lower(),
        detail=Reason.UPSTREAM_ERROR,
    )


def _not_modified_if_matching(reply: Reply, if_none_match: bytes) -> Reply:
    etag = next((v for n, v in reply.headers if n == b"etag"), None)
    if etag is None or reply.rest is not None:
        return reply
    if not if_none_match_hits(if_none_match, etag.decode("ascii")):
        return reply
    headers = [(n, v) for n, v in reply.headers if n != b"content-type"]
    return Reply(304, headers, b"", cache=reply.cache, upstream_status=reply.upstream_status)


def _content_type(headers: list[Header]) -> str:
    for name, value in headers:
        if name == b"content-type":
            return value.decode("latin-1")
    return ""


async def _discard(fetched: FetchedResponse) -> None:
    if fetched.rest is not None:
        await fetched.rest.aclose()
