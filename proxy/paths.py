"""Request-target checks (SPEC section 11) and the match of the two cached run routes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from proxy.model import CachedRoute, RouteKind
from proxy.runs import canonical_run_id

_PERCENT_ESCAPE = re.compile(rb"%([0-9a-fA-F]{2})")
_DOT_SEGMENTS = frozenset({b".", b".."})


@dataclass(frozen=True, slots=True)
class PathRejected:
    """The path must not be forwarded; `message` says why, in terms a client can act on."""

    message: str


def check_path(raw_path: bytes) -> PathRejected | None:
    """Reject dot segments (also `%2e`-spelled), encoded slashes, backslashes and control
    characters.

    WHATWG URL parsers (and some of Node's) read a backslash as a slash, so `/a/..\\b` may hold a
    dot segment, and `/v1/runs/<id>\\tags` a write to a run, for whatever parses the path after
    the proxy. No Lunary path has one: refused, raw or `%5C`.
    """
    if not raw_path.startswith(b"/"):
        return PathRejected("the path must start with '/'")
    if any(byte < 0x20 or byte == 0x7F for byte in raw_path):
        return PathRejected("the path holds a control character")
    if b"\\" in raw_path:
        return PathRejected("the path holds a backslash")
    if b"%" in raw_path:
        for match in _PERCENT_ESCAPE.finditer(raw_path):
            value = int(match[1], 16)
            if value == 0x2F:
                return PathRejected("the path holds an encoded slash (%2F)")
            if value == 0x5C:
                return PathRejected("the path holds an encoded backslash (%5C)")
            if value < 0x20 or value == 0x7F:
                return PathRejected("the path holds an encoded control character")
    for segment in raw_path.split(b"/"):
        if segment and _decode_dots(segment) in _DOT_SEGMENTS:
            return PathRejected("the path holds a dot segment")
    return None


def _decode_dots(segment: bytes) -> bytes:
    if len(segment) > 6:  # the longest dot segment spelling is "%2e%2e"
        return segment
    return segment.replace(b"%2e", b".").replace(b"%2E", b".")


def match_cached_route(raw_path: bytes) -> CachedRoute | None:
    """`/v1/runs/{uuid}` or `/v1/runs/{uuid}/related`, with the id in canonical form."""
    parts = raw_path.split(b"/")
    if len(parts) == 4:
        kind = RouteKind.RUN
    elif len(parts) == 5 and parts[4] == b"related":
        kind = RouteKind.RELATED
    else:
        return None
    if parts[0] or parts[1] != b"v1" or parts[2] != b"runs":
        return None
    run_id = canonical_run_id(unquote_segment(parts[3]))
    return None if run_id is None else CachedRoute(kind, run_id)


def unquote_segment(segment: bytes) -> str:
    """A path segment as text, percent-decoded (the run id of `%7B...%7D` is a UUID too)."""
    text = segment.decode("latin-1")
    return unquote(text) if "%" in text else text


def match_run_write(raw_path: bytes) -> str | None:
    """The run a write to `/v1/runs/{uuid}` or `/v1/runs/{uuid}/...` changes, if any."""
    # Lunary's router ignores case: a write must invalidate however it spelled the path
    parts = raw_path.split(b"/", 4)
    if len(parts) < 4 or parts[0] or parts[1].lower() != b"v1" or parts[2].lower() != b"runs":
        return None
    return canonical_run_id(unquote_segment(parts[3]))


def is_own_surface(raw_path: bytes) -> bool:
    """`/admin...` and `/openapi.json` in any case or percent-spelling: never forwarded, so a
    mistyped purge cannot carry the admin token to Lunary."""
    if raw_path[:2].lower() not in (b"/a", b"/o", b"/%"):
        return False
    text = unquote(raw_path.decode("latin-1")).lower()
    return text in ("/admin", "/openapi.json") or text.startswith("/admin/")


def normalise_query(query_string: bytes) -> bytes:
    """Sort the `&`-separated parameters (raw, undecoded), so their order shares one entry."""
    if not query_string:
        return b""
    return b"&".join(sorted(part for part in query_string.split(b"&") if part))
