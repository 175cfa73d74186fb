"""Pure cache rules: keys, freshness, what to store and for how long; `now` is an argument."""

from __future__ import annotations

import hashlib
import math
from base64 import urlsafe_b64encode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from proxy.core.causes import UpstreamCause
from proxy.core.headers import Header, delta_seconds, directives
from proxy.core.model import (
    CachedRoute,
    DontStore,
    Entry,
    EntryKey,
    Freshness,
    Judgement,
    Reason,
    StoreDecision,
    StoreFor,
)
from proxy.core.runs import body_is_settled

CACHE_NAME = "lunary-cache-proxy"


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """The TTL settings the storage rules need (seconds; bytes for the size bound)."""

    cache_ttl: float
    stale_ttl: float
    active_run_ttl: float
    negative_ttl: float
    max_entry_bytes: int


def entry_key(route: CachedRoute, scope: str, normalised_query: bytes) -> EntryKey:
    """Route + scope (+ a digest of the sorted query); the store adds version and run id."""
    name = f"{route.kind.value}:{scope}"
    if normalised_query:
        digest = hashlib.blake2b(normalised_query, digest_size=12).digest()
        name += ":q" + urlsafe_b64encode(digest).decode("ascii")
    return EntryKey(route.run_id, name, scope)


def make_etag(body: bytes) -> str:
    """A strong validator derived from the body bytes alone."""
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return '"' + urlsafe_b64encode(digest).rstrip(b"=").decode("ascii") + '"'


def judge(entry: Entry, now: float) -> Judgement:
    """Fresh for `fresh_for`, then stale-servable for `stale_for`, then gone."""
    age = max(0.0, now - entry.stored_at)
    ttl = entry.fresh_for - age
    if ttl > 0:
        return Judgement(Freshness.FRESH, ttl, age)
    if age < entry.kept_for:
        return Judgement(Freshness.STALE, ttl, age)
    return Judgement(Freshness.EXPIRED, ttl, age)


def storage_decision(
    status: int,
    headers: Sequence[Header],
    body: bytes,
    complete: bool,
    lifetimes: Lifetimes,
) -> StoreDecision:
    """Decide whether an upstream answer to a cached route may be stored, and for how long.

    Checks run in order, each naming its reason, as Varnish's built-in `vcl_beresp_*` rules do.
    """
    values = _header_values(headers)
    if status not in (200, 404):
        return DontStore(Reason.STATUS)
    if b"set-cookie" in values:
        return DontStore(Reason.SET_COOKIE)
    control = directives(values.get(b"cache-control", ()))
    if "no-store" in control or "no-cache" in control:
        return DontStore(Reason.UPSTREAM_NO_STORE)
    if any(b"*" in value for value in values.get(b"vary", ())):
        return DontStore(Reason.VARY)
    if any(
        value.strip().lower() not in (b"", b"identity")
        for value in values.get(b"content-encoding", ())
    ):
        return DontStore(Reason.CONTENT_ENCODING)
    if not complete or len(body) > lifetimes.max_entry_bytes:
        return DontStore(Reason.TOO_LARGE)
    if status == 404:
        return _bounded(lifetimes.negative_ttl, 0.0, control, Reason.NEGATIVE)
    if not _is_json(values.get(b"content-type", ())):
        return DontStore(Reason.NOT_JSON)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return DontStore(Reason.INVALID_JSON)
    fresh = (
        lifetimes.cache_ttl
        if body_is_settled(document)
        else min(lifetimes.cache_ttl, lifetimes.active_run_ttl)
    )
    return _bounded(fresh, lifetimes.stale_ttl, control, Reason.STORED)


def _bounded(
    fresh: float, stale: float, control: Mapping[str, str | None], reason: Reason
) -> StoreDecision:
    """Upstream `max-age`/`s-maxage` can only shorten the fresh time, never the stale window."""
    for directive in ("s-maxage", "max-age"):
        limit = delta_seconds(control.get(directive))
        if limit is not None:
            fresh = min(fresh, float(limit))
    if fresh <= 0 and stale <= 0:
        return DontStore(Reason.ZERO_TTL)
    return StoreFor(fresh, stale, reason)


def _header_values(headers: Sequence[Header]) -> dict[bytes, list[bytes]]:
    values: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        values.setdefault(name, []).append(value)
    return values


def _is_json(content_types: Sequence[bytes]) -> bool:
    if not content_types:
        return False
    media = content_types[0].split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: Reason | UpstreamCause | None = None,
) -> bytes:
    """An RFC 9211 `Cache-Status` member for this cache; never carries a key or credential.
    `detail` is a decision's reason, or why the upstream could not be asked (both sf-tokens)."""
    parts = [CACHE_NAME]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if ttl is not None:
        parts.append(f"ttl={math.floor(ttl)}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if detail is not None:
        parts.append(f"detail={detail.value}")
    return "; ".join(parts).encode("ascii")
