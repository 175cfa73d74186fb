"""Storage decisions, freshness and Cache-Status, with an explicit `now`."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.model import CachedRoute, DontStore, Entry, Freshness, Reason, RouteKind, StoreFor
from proxy.core.policy import Lifetimes, cache_status, entry_key, judge, make_etag, storage_decision

LIFETIMES = Lifetimes(
    cache_ttl=60, stale_ttl=600, active_run_ttl=2, negative_ttl=5, max_entry_bytes=1000
)
JSON = [(b"content-type", b"application/json; charset=utf-8")]
SETTLED = orjson.dumps(
    {"id": "x", "status": "success", "endedAt": "2026-01-01T00:00:00Z", "type": "llm"}
)
RUNNING = orjson.dumps({"id": "x", "status": "started", "endedAt": None, "type": "llm"})


def decide(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None,
           body: bytes = SETTLED, complete: bool = True) -> object:  # fmt: skip
    return storage_decision(status, JSON if headers is None else headers, body, complete, LIFETIMES)


def test_settled_run_is_fresh_for_the_cache_ttl_then_stale() -> None:
    assert decide() == StoreFor(60, 600)


def test_unsettled_bodies_are_fresh_for_the_active_run_ttl() -> None:
    assert decide(body=RUNNING) == StoreFor(2, 600)
    assert decide(body=b"[]") == StoreFor(2, 600)
    assert decide(body=b"[" + SETTLED + b"," + RUNNING + b"]") == StoreFor(2, 600)
    assert decide(body=b"[" + SETTLED + b"]") == StoreFor(60, 600)


def test_not_found_is_stored_for_the_negative_ttl_and_never_stale() -> None:
    assert decide(404, body=b'{"message":"Run not found"}') == StoreFor(5, 0, Reason.NEGATIVE)


@pytest.mark.parametrize(
    "status", [201, 204, 301, 302, 304, 400, 401, 403, 422, 429, 500, 502, 503]
)
def test_other_statuses_are_never_stored(status: int) -> None:
    assert decide(status) == DontStore(Reason.STATUS)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([*JSON, (b"set-cookie", b"a=1")], Reason.SET_COOKIE),
        ([*JSON, (b"cache-control", b"no-store")], Reason.UPSTREAM_NO_STORE),
        ([*JSON, (b"cache-control", b"private, no-cache")], Reason.UPSTREAM_NO_STORE),
        ([*JSON, (b"vary", b"*")], Reason.VARY),
        ([*JSON, (b"content-encoding", b"gzip")], Reason.CONTENT_ENCODING),
        ([(b"content-type", b"text/html")], Reason.NOT_JSON),
        ([], Reason.NOT_JSON),
    ],
)
def test_unstorable_headers(headers: list[tuple[bytes, bytes]], reason: Reason) -> None:
    assert decide(headers=headers) == DontStore(reason)


def test_body_checks() -> None:
    assert decide(body=b'{"id": ') == DontStore(Reason.INVALID_JSON)
    assert decide(body=b"x" * 1001) == DontStore(Reason.TOO_LARGE)
    assert decide(body=SETTLED, complete=False) == DontStore(Reason.TOO_LARGE)
    assert decide(404, headers=[(b"set-cookie", b"a")]) == DontStore(Reason.SET_COOKIE)


def test_private_is_storable_and_max_age_only_shortens_fresh_time() -> None:
    private = [*JSON, (b"cache-control", b"private")]
    assert decide(headers=private) == StoreFor(60, 600)
    assert decide(headers=[*JSON, (b"cache-control", b"max-age=10")]) == StoreFor(10, 600)
    assert decide(headers=[*JSON, (b"cache-control", b"s-maxage=7, max-age=9")]) == StoreFor(7, 600)
    assert decide(headers=[*JSON, (b"cache-control", b"max-age=999")]) == StoreFor(60, 600)
    assert decide(headers=[*JSON, (b"cache-control", b"max-age=abc")]) == StoreFor(60, 600)
    assert decide(404, headers=[(b"cache-control", b"max-age=0")]) == DontStore(Reason.ZERO_TTL)


def entry(stored_at: float = 1000.0, fresh: float = 60, stale: float = 600) -> Entry:
    return Entry(200, "application/json", b"{}", '"e"', stored_at, fresh, stale)


@pytest.mark.parametrize(
    ("now", "freshness", "ttl"),
    [
        (1000.0, Freshness.FRESH, 60),
        (1059.9, Freshness.FRESH, 0.1),
        (1060.0, Freshness.STALE, 0),
        (1659.9, Freshness.STALE, -599.9),
        (1660.0, Freshness.EXPIRED, -600),
        (900.0, Freshness.FRESH, 60),  # clock went backwards: age is never negative
    ],
)
def test_judge(now: float, freshness: Freshness, ttl: float) -> None:
    judgement = judge(entry(), now)

    assert judgement.freshness is freshness
    assert judgement.ttl == pytest.approx(ttl)
    assert judgement.age >= 0


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e4), st.floats(0, 1e4))
def test_age_is_never_negative(stored_at: float, now: float, fresh: float, stale: float) -> None:
    assert judge(entry(stored_at, fresh, stale), now).age >= 0


def test_entry_key_orders_nothing_but_the_query() -> None:
    route = CachedRoute(RouteKind.RUN, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    plain = entry_key(route, "scope1", b"")
    with_query = entry_key(route, "scope1", b"a=1&b=2")

    assert plain.name == "run:scope1"
    assert plain.run_id == route.run_id
    assert with_query.name.startswith("run:scope1:q")
    assert with_query != entry_key(route, "scope1", b"a=1&b=3")
    assert with_query != entry_key(route, "scope2", b"a=1&b=2")
    assert entry_key(CachedRoute(RouteKind.RELATED, route.run_id), "scope1", b"").name == (
        "related:scope1"
    )


def test_etag_is_strong_and_depends_on_the_body() -> None:
    assert make_etag(b"a") == make_etag(b"a")
    assert make_etag(b"a") != make_etag(b"b")
    assert make_etag(b"a").startswith('"')


def test_cache_status_members() -> None:
    assert cache_status(hit=True, ttl=41.7) == b"lunary-cache-proxy; hit; ttl=41"
    assert cache_status(fwd="miss", fwd_status=200, stored=True) == (
        b"lunary-cache-proxy; fwd=miss; fwd-status=200; stored"
    )
    assert cache_status(fwd="stale", ttl=-0.2, detail=Reason.UPSTREAM_ERROR) == (
        b"lunary-cache-proxy; fwd=stale; ttl=-1; detail=upstream-error"
    )
