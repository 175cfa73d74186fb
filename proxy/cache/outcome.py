"""A fill's outcome as a request's reply (deliver): the leader relays, a waiter shares, stale
beats an error. A failure to reach the upstream is explained by its cause (Cache-Status
`detail=refused`, say); an error the upstream answered, by `detail=upstream-error`."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.cache import errors, replies
from proxy.cache.cooldowns import RateLimited
from proxy.cache.fill import Filled, entry_of, upstream_failed
from proxy.cache.ports import UpstreamError
from proxy.cache.replies import Reply
from proxy.core.headers import first_value
from proxy.core.model import CacheResult, Entry, Judgement, Reason
from proxy.core.policy import cache_status


@dataclass(frozen=True, slots=True)
class Plan:
    """How the leader of a fill will answer: what a request joining it needs to answer alike."""

    generation: int
    use_store: bool
    bucket: str
    stale: tuple[Entry, Judgement] | None
    result: CacheResult
    fwd: str
    detail: Reason | None = None


async def for_leader(filled: Filled, plan: Plan) -> Reply:
    """The reply of the request whose fill this was: it relays the answer (or serves stale)."""
    if plan.stale is not None and upstream_failed(filled):
        fetched = filled.fetched
        if fetched is not None and fetched.rest is not None:
            await fetched.rest.aclose()  # nobody relays the failed answer: free its connection
        return _stale_instead(filled, plan.stale)
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


def for_waiter(filled: Filled, plan: Plan) -> Reply | None:
    """The reply of a request that joined another's fill; None when nothing in it is reusable
    (the waiter then fetches for itself)."""
    if plan.stale is not None and upstream_failed(filled):
        return _stale_instead(filled, plan.stale)  # the leader closes the failed answer
    shared = _shared(filled)
    if shared is None:
        return None
    return replies.collapsed(shared, plan.result, plan.fwd, plan.detail)


def failed(exc: UpstreamError | RateLimited, plan: Plan) -> Reply:
    """Stale-if-error: a stale entry beats an error; else 429 (cooldown), 502 or 504."""
    if isinstance(exc, RateLimited):
        if plan.stale is not None:
            return replies.stale(*plan.stale, Reason.COOLDOWN)
        return replies.rate_limited(exc.remaining, plan.result)
    if plan.stale is not None:
        return replies.stale(*plan.stale, exc.cause)
    return replies.failure(errors.upstream_failure(exc), plan.result, exc.cause)


def _shared(filled: Filled) -> Entry | None:
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
    return entry_of(fetched, stored_at=0.0, fresh_for=0.0, stale_for=0.0)


def _stale_instead(filled: Filled, stale: tuple[Entry, Judgement]) -> Reply:
    fetched = filled.fetched
    assert fetched is not None  # upstream_failed: there was an answer
    return replies.stale(*stale, Reason.UPSTREAM_ERROR, fetched.status)
