"""Immutable values shared by the policy, the stores and the request lifecycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum


class RouteKind(StrEnum):
    """The two cached Lunary routes; the value is the metric label and key segment."""

    RUN = "run"
    RELATED = "related"


class CacheResult(StrEnum):
    """What the cache did for one request: the `X-Cache` header value."""

    HIT = "HIT"
    MISS = "MISS"
    STALE = "STALE"
    BYPASS = "BYPASS"


class Reason(StrEnum):
    """Stable tokens explaining a decision: `Cache-Status; detail=`, metric labels, log fields."""

    STORED = "stored"
    NEGATIVE = "negative"
    CLIENT_NO_STORE = "client-no-store"
    CLIENT_NO_CACHE = "client-no-cache"
    STORE_UNAVAILABLE = "store-unavailable"
    STORE_REFUSED = "store-refused"  # Redis answered no to the write (e.g. out of memory)
    # the upstream answered an error (a failure to get any answer is told by its cause instead,
    # proxy/core/causes.py: `detail=refused`, `detail=read_timeout`...)
    UPSTREAM_ERROR = "upstream-error"
    REVALIDATING = "revalidating"
    COOLDOWN = "rate-limit-cooldown"
    STATUS = "status"
    SET_COOKIE = "set-cookie"
    UPSTREAM_NO_STORE = "upstream-no-store"
    VARY = "vary"
    CONTENT_ENCODING = "content-encoding"
    NOT_JSON = "not-json"
    INVALID_JSON = "invalid-json"
    TOO_LARGE = "too-large"
    ZERO_TTL = "zero-ttl"


@dataclass(frozen=True, slots=True)
class CachedRoute:
    """A request that targets a cached route: the kind and the canonical run id."""

    kind: RouteKind
    run_id: str


@dataclass(frozen=True, slots=True)
class EntryKey:
    """Where an entry lives; `run_id` groups a run's entries (one hash slot, one generation)."""

    run_id: str
    name: str
    # the credential scope the name holds, for the fail-safe cuts (proxy/core/cuts.py); part of
    # `name` already, so it takes no part in equality
    scope: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored upstream answer and the times that govern it (wall-clock seconds)."""

    status: int
    content_type: str
    body: bytes
    etag: str
    stored_at: float
    fresh_for: float
    stale_for: float
    generation: int = 0
    # the answer's own header lines (content type, validator), encoded once per entry rather
    # than once per hit: an entry of the in-process tier answers many
    head: tuple[tuple[bytes, bytes], ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        head: list[tuple[bytes, bytes]] = []
        if self.content_type:
            head.append((b"content-type", self.content_type.encode("latin-1")))
        if self.status == 200:
            head.append((b"etag", self.etag.encode("ascii")))
        object.__setattr__(self, "head", tuple(head))  # frozen: set once, here

    @property
    def kept_for(self) -> float:
        """How long the store must keep the entry: fresh time plus the stale window."""
        return self.fresh_for + self.stale_for


@dataclass(frozen=True, slots=True)
class Lookup:
    """A store read: the entry (if any and current) and the run's generation to write under."""

    entry: Entry | None
    generation: int


class Freshness(Enum):
    """Where an entry stands at a given moment."""

    FRESH = "fresh"
    STALE = "stale"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Judgement:
    """An entry's freshness at `now`, with its remaining fresh seconds (negative once stale)."""

    freshness: Freshness
    ttl: float
    age: float


@dataclass(frozen=True, slots=True)
class StoreFor:
    """Decision: keep the answer fresh for `fresh_for` seconds, then stale for `stale_for`."""

    fresh_for: float
    stale_for: float
    reason: Reason = Reason.STORED


@dataclass(frozen=True, slots=True)
class DontStore:
    """Decision: pass the answer on but keep nothing, for `reason`."""

    reason: Reason


StoreDecision = StoreFor | DontStore


@dataclass(frozen=True, slots=True)
class ClientDirectives:
    """What the client's `Cache-Control`/`Pragma` ask of us."""

    no_store: bool = False
    no_cache: bool = False
