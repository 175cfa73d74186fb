"""The answers of cached routes: status, body, and the X-Cache, Age, Cache-Status, ETag set."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from proxy.cache import errors
from proxy.cache.ports import FetchedResponse
from proxy.core.causes import UpstreamCause
from proxy.core.headers import Header, first_value, if_none_match_hits
from proxy.core.model import CacheResult, Entry, Judgement, Reason
from proxy.core.policy import cache_status, make_etag

# Upstream headers not relayed on a miss: the length is ours to set, the validator is ours.
RELAY_DROP = frozenset({b"content-length", b"etag", b"last-modified"})


@dataclass(slots=True)
class Reply:
    """What to send back: `body` first, then `rest` (if streaming); `cache` is the metric label."""

    status: int
    headers: list[Header]
    body: bytes = b""
    rest: AsyncGenerator[bytes, None] | None = None
    cache: str = ""
    upstream_status: int | None = None  # what the upstream answered this request, if it was asked
    cause: UpstreamCause | None = None  # why the upstream could not be asked, if it failed


# A hit's Cache-Status, as cache_status() spells it, with only the TTL left to fill in.
HIT_STATUS = cache_status(hit=True) + b"; ttl=%d"
NEGATIVE_HIT_STATUS = HIT_STATUS + b"; detail=" + Reason.NEGATIVE.value.encode("ascii")


def hit(entry: Entry, judgement: Judgement) -> Reply:
    """The hottest path of all: the entry's header lines are encoded already, and only the
    numbers are formatted per request."""
    if entry.status == 200:
        status_line, cache = HIT_STATUS, "hit"
    else:
        status_line, cache = NEGATIVE_HIT_STATUS, "negative_hit"
    headers = [
        *entry.head,
        (b"x-cache", b"HIT"),
        (b"age", b"%d" % judgement.age),
        (b"cache-status", status_line % math.floor(judgement.ttl)),
    ]
    return Reply(entry.status, headers, entry.body, cache=cache)


def stale(
    entry: Entry,
    judgement: Judgement,
    reason: Reason | UpstreamCause,
    upstream_status: int | None = None,
) -> Reply:
    """A stale entry served at once: while revalidating, because the upstream answered an
    error, or because it could not be asked (`reason` is then the failure's cause)."""
    headers = entry_headers(entry)
    headers += [
        (b"x-cache", b"STALE"),
        (b"age", b"%d" % judgement.age),
        (
            b"cache-status",
            cache_status(fwd="stale", fwd_status=upstream_status, ttl=judgement.ttl, detail=reason),
        ),
    ]
    return Reply(
        entry.status,
        headers,
        entry.body,
        cache="stale",
        upstream_status=upstream_status,
        cause=_cause(reason),
    )


def relayed(fetched: FetchedResponse, result: CacheResult, status_header: bytes) -> Reply:
    """The upstream's own answer to this request: its end-to-end headers and ours."""
    headers = [(n, v) for n, v in fetched.headers if n not in RELAY_DROP]
    if fetched.status == 200 and fetched.complete:
        headers.append((b"etag", make_etag(fetched.body).encode("ascii")))
    headers += [(b"x-cache", result.value.encode()), (b"cache-status", status_header)]
    return Reply(
        fetched.status, headers, fetched.body, fetched.rest, result.value.lower(), fetched.status
    )


def collapsed(entry: Entry, result: CacheResult, fwd: str, detail: Reason | None = None) -> Reply:
    """An answer another request fetched for this key: only what a stored entry would carry."""
    headers = entry_headers(entry)
    status_header = cache_status(fwd=fwd, fwd_status=entry.status, collapsed=True, detail=detail)
    headers += [(b"x-cache", result.value.encode()), (b"cache-status", status_header)]
    return Reply(entry.status, headers, entry.body, cache=result.value.lower())


def entry_headers(entry: Entry) -> list[Header]:
    return list(entry.head)


def failure(
    reply: errors.ProxyErrorReply, result: CacheResult, detail: Reason | UpstreamCause
) -> Reply:
    """An answer the proxy made itself; `detail` is an upstream failure's cause when it is one."""
    headers = [
        (b"content-type", errors.JSON_TYPE),
        *reply.headers,
        (b"x-cache", result.value.encode()),
        (b"cache-status", cache_status(fwd="miss", detail=detail)),
    ]
    return Reply(
        reply.status, headers, reply.body(), cache=result.value.lower(), cause=_cause(detail)
    )


def _cause(detail: Reason | UpstreamCause) -> UpstreamCause | None:
    """The upstream failure's cause, for the access line, when `detail` is one."""
    return detail if isinstance(detail, UpstreamCause) else None


def rate_limited(remaining: float, result: CacheResult) -> Reply:
    return failure(errors.rate_limited(remaining), result, Reason.COOLDOWN)


def not_modified_if_matching(reply: Reply, if_none_match: bytes) -> Reply:
    """304 when the client already holds this 200's validator (weak comparison)."""
    if reply.status != 200 or reply.rest is not None:
        return reply
    etag = first_value(reply.headers, b"etag")
    if etag is None or not if_none_match_hits(if_none_match, etag.decode("ascii")):
        return reply
    headers = [(n, v) for n, v in reply.headers if n != b"content-type"]
    return Reply(
        304,
        headers,
        b"",
        cache=reply.cache,
        upstream_status=reply.upstream_status,
        cause=reply.cause,
    )
