"""Everything the lifespan opens and closes: the store, both upstream pools, the read driver,
the invalidator, background tasks; built from the settings, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from config import Settings
from config.masking import masked_url
from proxy.cache.cooldowns import Cooldowns
from proxy.cache.invalidation import Invalidator
from proxy.cache.ports import Store, StoreError, Upstream
from proxy.cache.reads import CachedReads, Coordination
from proxy.core.cuts import Cuts
from proxy.core.policy import Lifetimes
from proxy.core.scope import ScopeHasher
from proxy.ops.metrics import Metrics
from proxy.ops.tasks import TaskSet
from proxy.store.connection import connect
from proxy.store.cutting import CutListener, CuttingStore
from proxy.store.guard import GuardedStore
from proxy.store.memory import MemoryStore
from proxy.store.near import NearStore, NearTier
from proxy.store.notify import SILENT_AFTER, FillNotices
from proxy.store.redis import FILLED_CHANNEL, INVALIDATED_CHANNEL, RedisStore
from proxy.upstream import LunaryUpstream
from proxy.upstream.tls import upstream_tls
from proxy.web.admin import Admin
from proxy.web.buffering import BodyBuffer
from proxy.web.passthrough import Passthrough

log = logging.getLogger("proxy")
# how long start-up waits for the store's first connection (and a Cluster's slot map): a store
# that is down refuses at once; this bounds one that does not answer at all
STORE_CONNECT_BUDGET = 5.0


@dataclass(slots=True)
class Components:
    """Everything the lifespan opens and closes."""

    store: Store
    reads: CachedReads
    passthrough: Passthrough
    upstreams: tuple[Upstream, ...]
    tasks: TaskSet
    invalidator: Invalidator
    admin: Admin
    notices: FillNotices | None
    listener: asyncio.Task[None] | None


class Live:
    """The components while the app is up (None while it starts or stops): what every endpoint
    reads, and the lifespan sets."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: Components | None = None


async def open_components(settings: Settings, metrics: Metrics, hasher: ScopeHasher) -> Components:
    """Open everything; a start-up that fails half-way closes what it had opened."""
    async with contextlib.AsyncExitStack() as opened:
        parts = await _assemble(settings, metrics, hasher, opened)
        opened.pop_all()  # all open: close_components closes them from now on
        return parts


async def _assemble(
    s: Settings, metrics: Metrics, hasher: ScopeHasher, opened: contextlib.AsyncExitStack
) -> Components:
    tasks = TaskSet()
    opened.push_async_callback(tasks.close, 0.0)
    notices = _open_notices(s)
    listener = None if notices is None else asyncio.create_task(notices.run())
    if notices is not None and listener is not None:
        opened.push_async_callback(notices.close)
        opened.push_async_callback(_cancel, listener)
    store = await _open_store(s, metrics, notices)
    opened.push_async_callback(store.close)
    # two pools: passthrough (slow answers, large bodies) can never take the connections
    # cache fills need, nor fills the passthrough's; one TLS context (it reads the CAs from disk)
    tls = await asyncio.to_thread(upstream_tls, s.upstream_ca_file)
    fills = LunaryUpstream(s.upstream_url, s.upstream_timeout, s.fill_max_connections, tls)
    opened.push_async_callback(fills.close)
    forwards = LunaryUpstream(s.upstream_url, s.upstream_timeout, s.upstream_max_connections, tls)
    opened.push_async_callback(forwards.close)
    bodies = BodyBuffer(s.max_request_bytes, s.request_buffer_bytes, s.request_spool_bytes)
    cooldowns = Cooldowns(store)
    cuts = Cuts(s.active_run_ttl)
    near = _near_store(s, store, metrics, notices)
    cutting = CuttingStore(near or store, cuts)
    reads = CachedReads(
        cutting, fills, hasher, _lifetimes(s), metrics, tasks, cooldowns, _coordination(s)
    )
    if notices is not None:  # writes through other replicas detach fills here too
        cut_listener = CutListener(store, cutting, cuts, reads.forget_all)
        _listen(notices, reads, cut_listener, None if near is None else near.tier, tasks)
    invalidator = Invalidator(
        near or store,
        metrics,
        # a generation (or a cut) outlives every entry written before it, and every fill that
        # read the older state
        keep_for=max(s.cache_ttl + s.stale_ttl, s.negative_ttl) + s.upstream_timeout + 1,
        cuts=cuts,
        # a cut matters one by one for the active-run TTL; a second more for clock skew
        cut_window=s.active_run_ttl + 1,
        on_dropped=reads.forget_runs,
        on_cut=reads.forget_all,
    )
    return Components(
        store=store,
        reads=reads,
        passthrough=Passthrough(forwards, bodies, metrics, cooldowns),
        upstreams=(fills, forwards),
        tasks=tasks,
        invalidator=invalidator,
        admin=Admin(s.admin_token.get_secret_value(), invalidator),
        notices=notices,
        listener=listener,
    )


async def close_components(parts: Components) -> None:
    """Close everything, each even when one before it fails (the last failure is raised).
    In order: invalidations, background tasks, the listener, the upstream pools, the store."""
    async with contextlib.AsyncExitStack() as closing:  # runs its callbacks last one first
        if parts.notices is not None:
            closing.push_async_callback(parts.notices.close)
        closing.push_async_callback(parts.store.close)
        for upstream in reversed(parts.upstreams):
            closing.push_async_callback(upstream.close)
        if parts.listener is not None:
            closing.push_async_callback(_cancel, parts.listener)
        # in-flight fills and refreshes get a moment to land, then are cancelled
        closing.push_async_callback(parts.tasks.close, 1.0)
        closing.push_async_callback(parts.invalidator.close)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _lifetimes(s: Settings) -> Lifetimes:
    return Lifetimes(
        cache_ttl=s.cache_ttl,
        stale_ttl=s.stale_ttl,
        active_run_ttl=s.active_run_ttl,
        negative_ttl=s.negative_ttl,
        max_entry_bytes=s.max_entry_bytes,
    )


def _coordination(s: Settings) -> Coordination:
    return Coordination(
        # a leader's fetch cannot outlive the upstream timeout; the lease adds a margin
        lock_lease=s.upstream_timeout + 1,
        coalesce_timeout=s.effective_coalesce_timeout,
    )


def _listen(
    notices: FillNotices,
    reads: CachedReads,
    cuts: CutListener,
    tier: NearTier | None,
    tasks: TaskSet,
) -> None:
    """What the announcements drive: writes through other replicas detach fills here and drop
    the run from the in-process tier; other replicas' cuts arrive too. Until the listener has
    subscribed and read back the kept cuts, nothing is answered from the store; while it is
    away or silent, nothing is answered from the tier, which is emptied when it goes and when
    it is back (announcements may have been missed)."""

    def invalidated(run_id: str) -> None:
        reads.forget_run(run_id)
        if tier is not None:
            tier.drop_run(run_id)

    def lost() -> None:
        cuts.lost()
        if tier is not None:
            tier.reset()

    def subscribed() -> None:
        if tier is not None:
            tier.reset()
        tasks.spawn(cuts.catch_up(), "cuts")

    def alive(until: float) -> None:
        if tier is not None:
            tier.live_until = until

    cuts.lost()
    notices.on_invalidated = invalidated
    notices.on_cut = cuts.heard
    notices.on_lost = lost
    notices.on_subscribed = subscribed
    notices.on_alive = alive
    if notices.subscribed.is_set():  # it subscribed while the store was being opened
        subscribed()
        alive(time.monotonic() + SILENT_AFTER)


def _near_store(
    s: Settings, store: GuardedStore, metrics: Metrics, notices: FillNotices | None
) -> NearStore | None:
    """The in-process tier, when there is Redis to be in front of and a listener to keep it
    coherent."""
    if not s.near_cache or notices is None or s.near_max_bytes == 0:
        return None
    return NearStore(store, NearTier(s.near_max_bytes, s.near_ttl, metrics))


def _open_notices(s: Settings) -> FillNotices | None:
    if not s.redis_url:
        return None
    # no silent reconnect: a lost subscription must be seen (store/cutting.py)
    listener = connect(s.redis_url, cluster=s.redis_cluster, timeout=None, retries=0)
    return FillNotices(listener, FILLED_CHANNEL, INVALIDATED_CHANNEL)


async def _open_store(s: Settings, metrics: Metrics, notices: FillNotices | None) -> GuardedStore:
    if not s.redis_url:
        return GuardedStore(MemoryStore(s.memory_max_entries), metrics)
    client = connect(s.redis_url, cluster=s.redis_cluster, timeout=s.redis_timeout)
    redis_store = RedisStore(
        client, s.redis_timeout, on_corrupt=metrics.corrupt_entry, notices=notices
    )
    store = GuardedStore(redis_store, metrics)
    try:
        await redis_store.connect(STORE_CONNECT_BUDGET)
    except StoreError as exc:  # not fatal: requests bypass it until it answers
        log.warning(
            "the store does not answer at start-up: serving from Lunary until it does",
            extra={"store": store_description(s), "error": str(exc)},
        )
        store.failed_at_start(exc)
    return store


def store_description(s: Settings) -> str:
    if not s.redis_url:
        return f"in-memory (embedded, up to {s.memory_max_entries} entries, not shared)"
    kind = "redis cluster" if s.redis_cluster else "redis"
    near = (
        f", in-process tier up to {s.near_max_bytes} bytes, confirmed every {s.near_ttl:g} s"
        if s.near_cache and s.near_max_bytes
        else ", no in-process tier"
    )
    return f"{kind} at {masked_url(s.redis_url)}{near}"
