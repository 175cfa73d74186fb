"""Prometheus collectors on an injected registry; labels never carry a URL, key or credential."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from proxy import __version__
from proxy.core.causes import StoreCause, UpstreamCause
from proxy.core.model import Reason

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
CACHE_RESULTS = ("hit", "negative_hit", "miss", "stale", "bypass")
NEAR_RESULTS = ("hit", "miss", "unconfirmed", "bypass")
NEAR_DROPS = ("invalidated", "reset", "changed")
INVALIDATION_SOURCES = ("write", "ingest", "admin")


class Metrics:
    """The proxy's collectors; methods are named for the event they count."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._requests_family(registry)
        self._upstream_family(registry)
        self._store_family(registry)
        self._fill_family(registry)
        self._invalidation_family(registry)
        self._near_family(registry)
        Info("lunary_proxy_build", "Build information.", registry=registry).info(
            {"version": __version__}
        )
        # bind the hot-path children once; label lookups cost more than the increment itself
        self._request_children = {
            (route, cache): self._requests.labels(route, cache)
            for route in ("run", "related")
            for cache in CACHE_RESULTS
        }

    # Each family registers its collectors in the order they always were: the exposition (and
    # the README's metrics table) lists them in that order.

    def _requests_family(self, registry: CollectorRegistry) -> None:
        self._requests = Counter(
            "lunary_proxy_requests",
            "Requests answered, by route and cache result.",
            ["route", "cache"],
            registry=registry,
        )

    def _upstream_family(self, registry: CollectorRegistry) -> None:
        self._upstream = Counter(
            "lunary_proxy_upstream_requests",
            "Upstream requests, by purpose (fill or passthrough) and status class or error.",
            ["purpose", "status"],
            registry=registry,
        )
        self._upstream_latency = Histogram(
            "lunary_proxy_upstream_request_duration_seconds",
            "Time until the upstream's response headers (fills: whole body).",
            ["purpose"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._upstream_errors = Counter(
            "lunary_proxy_upstream_errors",
            "Upstream requests that got no answer, by purpose and cause (proxy/core/causes.py).",
            ["purpose", "cause"],
            registry=registry,
        )

    def _store_family(self, registry: CollectorRegistry) -> None:
        self._store_errors = Counter(
            "lunary_proxy_store_errors",
            "Store calls that failed or timed out, by operation and cause (proxy/core/causes.py).",
            ["operation", "cause"],
            registry=registry,
        )
        self._store_latency = Histogram(
            "lunary_proxy_store_operation_duration_seconds",
            "Store call latency, by operation.",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self._store_latency_children: dict[str, Histogram] = {}
        self._corrupt = Counter(
            "lunary_proxy_store_corrupt_entries",
            "Stored values that could not be decoded and were treated as misses.",
            registry=registry,
        )
        self._breaker = Gauge(
            "lunary_proxy_store_breaker_open",
            "1 while the store is being skipped after a failure.",
            registry=registry,
        )

    def _fill_family(self, registry: CollectorRegistry) -> None:
        """What became of cache fills: not stored, coalesced, refreshed, held by a cooldown."""
        self._not_stored = Counter(
            "lunary_proxy_responses_not_stored",
            "Upstream answers to cached routes that were not stored, by reason.",
            ["reason"],
            registry=registry,
        )
        self._coalesced = Counter(
            "lunary_proxy_coalesced_waits",
            "Requests that waited for another request's fetch instead of making their own, by "
            "outcome: joined (same process), replica (another replica's entry), timeout and "
            "refetch (gave up waiting, or nothing reusable came back).",
            ["outcome"],
            registry=registry,
        )
        self._background = Counter(
            "lunary_proxy_background_refreshes",
            "Background refreshes started for stale entries.",
            registry=registry,
        )
        self._cooldowns = Counter(
            "lunary_proxy_upstream_cooldowns",
            "Upstream 429 answers that opened a cooldown for their rate bucket.",
            registry=registry,
        )
        self._cooldown_rejections = Counter(
            "lunary_proxy_cooldown_rejections",
            "Upstream requests not made because their rate bucket was cooling down.",
            registry=registry,
        )

    def _invalidation_family(self, registry: CollectorRegistry) -> None:
        """Dropping runs after writes, and the fail-safe cuts when a write could not be read."""
        self._invalidations = Counter(
            "lunary_proxy_invalidations",
            "Runs whose entries were dropped, by source (write, ingest, admin) and result.",
            ["source", "result"],
            registry=registry,
        )
        # every series exported from 0: an alert's increase() counts a series' first error only
        # when the series was there before it
        for source in INVALIDATION_SOURCES:
            for result in ("ok", "error"):
                self._invalidations.labels(source, result)
        self._ingest_unparsed = Counter(
            "lunary_proxy_ingest_unparsed",
            "Ingest bodies forwarded but not read exactly: each made a fail-safe cut.",
            registry=registry,
        )
        self._cuts = Counter(
            "lunary_proxy_cuts",
            "Fail-safe cuts, by reason: writes that may have changed runs the proxy cannot name.",
            ["reason"],
            registry=registry,
        )

    def _near_family(self, registry: CollectorRegistry) -> None:
        """The in-process tier in front of Redis (proxy/store/near.py)."""
        self._near_lookups = Counter(
            "lunary_proxy_near_lookups",
            "Lookups in the in-process tier, by result: hit (answered without Redis), miss, "
            "unconfirmed (held, but past PROXY_NEAR_TTL: asked Redis), bypass (the tier was not "
            "trusted: its invalidation listener was away or silent).",
            ["result"],
            registry=registry,
        )
        self._near_evictions = Counter(
            "lunary_proxy_near_evictions",
            "Entries the in-process tier evicted to stay under PROXY_NEAR_MAX_BYTES.",
            registry=registry,
        )
        self._near_drops = Counter(
            "lunary_proxy_near_invalidations",
            "Entries the in-process tier dropped, by cause: invalidated (a write or purge on any "
            "replica), reset (the invalidation listener was lost or came back), changed (Redis "
            "no longer held the same entry when asked).",
            ["cause"],
            registry=registry,
        )
        self._near_bytes = Gauge(
            "lunary_proxy_near_bytes",
            "Bytes the in-process tier accounts for (bodies and per-entry overhead).",
            registry=registry,
        )
        self._near_entries = Gauge(
            "lunary_proxy_near_entries", "Entries in the in-process tier.", registry=registry
        )
        self.near_lookup = {result: self._near_lookups.labels(result) for result in NEAR_RESULTS}
        self.near_dropped = {cause: self._near_drops.labels(cause) for cause in NEAR_DROPS}

    def near_size(self, entries: int, size: int) -> None:
        self._near_entries.set(entries)
        self._near_bytes.set(size)

    def near_evicted(self, count: int = 1) -> None:
        self._near_evictions.inc(count)

    def request(self, route: str, cache: str) -> None:
        child = self._request_children.get((route, cache))
        (child or self._requests.labels(route, cache)).inc()

    def upstream(
        self, purpose: str, status: int | str, seconds: float, cause: UpstreamCause | None = None
    ) -> None:
        """An upstream request's status (class) or error label; a failure's cause, if any."""
        label = f"{status // 100}xx" if isinstance(status, int) else status
        self._upstream.labels(purpose, label).inc()
        self._upstream_latency.labels(purpose).observe(seconds)
        if cause is not None:
            self._upstream_errors.labels(purpose, cause.value).inc()

    def store_error(self, operation: str, cause: StoreCause = StoreCause.OTHER) -> None:
        self._store_errors.labels(operation, cause.value).inc()

    def store_latency(self, operation: str, seconds: float) -> None:
        child = self._store_latency_children.get(operation)
        if child is None:  # labels() takes a lock and builds a tuple: once per operation
            child = self._store_latency_children[operation] = self._store_latency.labels(operation)
        child.observe(seconds)

    def corrupt_entry(self) -> None:
        self._corrupt.inc()

    def breaker_open(self, is_open: bool) -> None:
        self._breaker.set(1 if is_open else 0)

    def not_stored(self, reason: Reason) -> None:
        self._not_stored.labels(reason.value).inc()

    def invalidation(self, source: str, *, ok: bool) -> None:
        self._invalidations.labels(source, "ok" if ok else "error").inc()

    def ingest_unparsed(self) -> None:
        self._ingest_unparsed.inc()

    def cut(self, reason: str) -> None:
        self._cuts.labels(reason).inc()

    def coalesced(self, outcome: str) -> None:
        self._coalesced.labels(outcome).inc()

    def background_refresh(self) -> None:
        self._background.inc()

    def cooldown_started(self) -> None:
        self._cooldowns.inc()

    def cooldown_rejection(self) -> None:
        self._cooldown_rejections.inc()
