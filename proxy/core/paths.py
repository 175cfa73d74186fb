"""Request-target checks (SPEC section 11) and the match of the two cached run routes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

from proxy.core.model import CachedRoute, RouteKind
from proxy.core.runs import canonical_run_id

_PERCENT_ESCAPE = re.compile(rb"%([0-9a-fA-F]{2})")
_DOT_SEGMENTS = frozenset({b".", b".."})
# How many percent-decodings `is_own_surface` looks through: servers and frameworks decode a
# path once, a few twice; bounded, as each round costs a pass over a path of up to 64 KiB.
OWN_SURFACE_DECODINGS = 3


@dataclass(frozen=True, slots=True)
class PathRejected:
    """The path must not be forwarded; `message` says why, in terms a client can act on."""

    message: str


def check_path(raw_path: bytes) -> PathRejected | None:
    """Reject dot segments (also `%2e`-spelled), encoded slashes, backslashes, control
    characters, bytes that are not ASCII, and percent-encodings that are not UTF-8.

    WHATWG URL parsers (and some of Node's) read a backslash as a slash, so `/a/..\\b` may hold a
    dot segment, and `/v1/runs/<id>\\tags` a write to a run, for whatever parses the path after
    the proxy. No Lunary path has one: refused, raw or `%5C`. Decoded path bytes must be UTF-8:
    an overlong `%c0%ae` is a dot to a lax decoder, and no Lunary route holds one (it answers
    500). A raw byte above 0x7F is not valid in a request-target at all (uvicorn refuses it
    before the app; refused here too, whatever server runs the app).
    """
    if not raw_path.startswith(b"/"):
        return PathRejected("the path must start with '/'")
    if any(byte < 0x20 or byte == 0x7F for byte in raw_path):
        return PathRejected("the path holds a control character")
    if not raw_path.isascii():
        return PathRejected("the path holds a byte that is not ASCII (percent-encode it)")
    if b"\\" in raw_path:
        return PathRejected("the path holds a backslash")
    if b"%" in raw_path:
        rejected = _check_escapes(raw_path)
        if rejected is not None:
            return rejected
    for segment in raw_path.split(b"/"):
        if segment and _decode_dots(segment) in _DOT_SEGMENTS:
            return PathRejected("the path holds a dot segment")
    return None


def _check_escapes(raw_path: bytes) -> PathRejected | None:
    above_ascii = False
    for match in _PERCENT_ESCAPE.finditer(raw_path):
        value = int(match[1], 16)
        if value == 0x2F:
            return PathRejected("the path holds an encoded slash (%2F)")
        if value == 0x5C:
            return PathRejected("the path holds an encoded backslash (%5C)")
        if value < 0x20 or value == 0x7F:
            return PathRejected("the path holds an encoded control character")
        above_ascii = above_ascii or value > 0x7F
    if above_ascii and not _is_utf8(unquote_to_bytes(raw_path)):
        return PathRejected("the path holds a percent-encoding that is not valid UTF-8")
    return None


def _is_utf8(data: bytes) -> bool:
    """Strict UTF-8: Python's decoder refuses overlong forms, surrogates and code points past
    U+10FFFF."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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


# Lunary routes (commit a86d698) that change runs they do not name: deleting an external user
# deletes its runs, a project its runs, a template its runs' templateVersionId; changing or
# deleting an evaluator changes every run it evaluated. As (method, the collection under /v1/).
_WRITES_UNNAMED_RUNS = frozenset(
    {
        ("DELETE", b"external-users"),
        ("DELETE", b"projects"),
        ("DELETE", b"templates"),
        ("PATCH", b"evaluators"),
        ("DELETE", b"evaluators"),
    }
)


def writes_unnamed_runs(method: str, raw_path: bytes) -> bool:
    """Whether a write to `/v1/{collection}/{id}` changes runs its request does not name (the
    caller fails safe with a cut). Read as Lunary's router reads paths: any case, a trailing
    slash."""
    parts = raw_path.lower().rstrip(b"/").split(b"/")
    return (
        len(parts) == 4
        and not parts[0]
        and parts[1] == b"v1"
        and (method, parts[2]) in _WRITES_UNNAMED_RUNS
    )


def is_own_surface(raw_path: bytes) -> bool:
    """`/admin...` and `/openapi.json` however a server might normalise the path: never
    forwarded, so a mistyped purge cannot carry the admin token to Lunary.

    Read through up to OWN_SURFACE_DECODINGS percent-decodings, each as a normaliser would:
    case, `;` parameters, empty segments (`//admin`, a trailing slash), dot segments (`..;`
    too) and backslashes as slashes.
    """
    if b"%" not in raw_path:  # then it spells a reserved name literally: a cheap first test
        lowered = raw_path.lower()
        if b"admin" not in lowered and b"openapi.json" not in lowered:
            return False
    path = raw_path
    for _ in range(OWN_SURFACE_DECODINGS + 1):
        segments = _normalised_segments(path)
        if segments[:1] == [b"admin"] or segments == [b"openapi.json"]:
            return True
        if b"%" not in path:
            return False
        path = unquote_to_bytes(path)
    return False


def _normalised_segments(path: bytes) -> list[bytes]:
    segments: list[bytes] = []
    for segment in path.replace(b"\\", b"/").split(b"/"):
        segment = segment.split(b";", 1)[0].lower()  # `admin;x=1` is `admin` to Tomcat & co.
        if segment == b"..":
            del segments[-1:]
        elif segment not in (b"", b"."):
            segments.append(segment)
    return segments


def normalise_query(query_string: bytes) -> bytes:
    """The `&`-separated parameters (raw, undecoded) sorted by name, stably: the order of
    distinct names shares one entry, the order of a repeated name's values does not.

    Names are compared as Lunary reads them (`+` and percent-decoded): sorted by the raw name,
    `project%49d=a&projectId=b` and `projectId=b&project%49d=a` would share an entry, though
    Lunary reads `[a, b]` and `[b, a]`.
    """
    if not query_string:
        return b""
    parameters = sorted((part for part in query_string.split(b"&") if part), key=_name)
    return b"&".join(parameters)


def _name(parameter: bytes) -> bytes:
    name = parameter.split(b"=", 1)[0]
    if b"%" in name or b"+" in name:
        name = unquote_to_bytes(name.replace(b"+", b" "))
    # bytes past ASCII are left out: however a server decodes them (UTF-8, replacement
    # characters), names it reads as one stay in their order; it only keeps more orders apart
    return name if name.isascii() else bytes(byte for byte in name if byte < 0x80)
