"""A cached read as received (recv): its facts, read once, and the fill that would answer it."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.cache.fill import Fill
from proxy.cache.ports import UpstreamRequest
from proxy.core.headers import Header, end_to_end, first_forwarded_address, forwarded_for
from proxy.core.model import CachedRoute, EntryKey

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
class Facts:
    """The request headers the lifecycle reads, gathered in one pass."""

    authorization: bytes | None = None
    api_key: bytes | None = None
    if_none_match: bytes | None = None
    forwarded: list[bytes] = field(default_factory=list)
    cache_control: list[bytes] = field(default_factory=list)
    pragma: list[bytes] = field(default_factory=list)

    @classmethod
    def read(cls, headers: list[Header]) -> Facts:
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


def fill_for(
    request: ReadRequest,
    facts: Facts,
    key: EntryKey,
    now: float,
    generation: int,
    *,
    use_store: bool,
    seen: float = 0.0,
) -> Fill:
    """The fill that would answer `request`: built only when one may run, never on a hit."""
    headers = end_to_end(request.headers, FILL_DROP)
    headers.append(IDENTITY)
    chain = forwarded_for(facts.forwarded, request.client_host)
    if chain is not None:
        headers.append((b"x-forwarded-for", chain))
    upstream_request = UpstreamRequest("GET", request.raw_path, request.query_string, headers)
    bucket = first_forwarded_address(chain)
    return Fill(key, upstream_request, bucket, generation, use_store, now, seen)
