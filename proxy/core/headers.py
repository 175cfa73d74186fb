"""HTTP header rules: hop-by-hop filtering, Cache-Control parsing, validators, X-Forwarded-For."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from email.utils import parsedate_to_datetime

from proxy.core.model import ClientDirectives

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


# The headers Lunary takes a credential from, and the scope is derived from (proxy/core/scope.py).
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key"})


def first_value(headers: Iterable[Header], name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), or None."""
    return next((value for field, value in headers if field == name), None)


def not_utf8(headers: Sequence[Header]) -> bytes | None:
    """The name of the first header to forward whose value is not UTF-8, or None.

    The upstream client writes header values as UTF-8 text: other bytes cannot be forwarded
    byte for byte (aiohttp would drop them, changing a credential from the one the scope was
    derived from), so such a request is refused instead. Hop-by-hop headers are never
    forwarded, so their bytes do not matter.
    """
    never_forwarded: frozenset[bytes] | None = None
    for name, value in headers:
        if value.isascii():
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            if never_forwarded is None:
                never_forwarded = HOP_BY_HOP | _connection_named(headers)
            if name not in never_forwarded:
                return name
    return None


def hop_by_hop_credential(headers: Iterable[Header]) -> bytes | None:
    """The credential header a `Connection` header names, or None.

    A header named there is hop-by-hop, so it is dropped before Lunary: the request would be
    scoped by a credential Lunary never saw, and the anonymous answer stored under it. A
    credential is never meant for the proxy alone, so such a request is refused.
    """
    named = _connection_named(headers) & CREDENTIAL_HEADERS
    return min(named) if named else None


def _connection_named(headers: Iterable[Header]) -> set[bytes]:
    return {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }


def end_to_end(
    headers: Iterable[Header], also_drop: frozenset[bytes] = frozenset()
) -> list[Header]:
    """Headers minus hop-by-hop ones, those the Connection header names, and `also_drop`.

    Names must already be lower case (ASGI gives them so; the upstream adapter lower-cases).
    """
    headers = list(headers)
    named = _connection_named(headers)
    return [
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP and name not in named and name not in also_drop
    ]


def directives(values: Iterable[bytes]) -> dict[str, str | None]:
    """Parse `Cache-Control` values into {directive: argument or None}, names lower-cased."""
    parsed: dict[str, str | None] = {}
    for value in values:
        for item in value.decode("latin-1").split(","):
            name, sep, argument = item.strip().partition("=")
            if name:
                parsed[name.lower()] = argument.strip().strip('"') if sep else None
    return parsed


def client_directives(cache_control: Iterable[bytes], pragma: Iterable[bytes]) -> ClientDirectives:
    """`no-store` bypasses the store; `no-cache`, `max-age=0` or `Pragma: no-cache` refresh it."""
    parsed = directives(cache_control)
    no_cache = "no-cache" in parsed or parsed.get("max-age") == "0"
    if not parsed and any(b"no-cache" in value.lower() for value in pragma):
        no_cache = True
    return ClientDirectives(no_store="no-store" in parsed, no_cache=no_cache)


def delta_seconds(value: str | None) -> int | None:
    """A Cache-Control delta-seconds argument, or None when absent or malformed."""
    if value is None or not value.isdigit():
        return None
    return int(value)


def if_none_match_hits(if_none_match: bytes, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): `*` or any listed tag equal to ours ignoring `W/`."""
    value = if_none_match.strip()
    if value == b"*":
        return True
    ours = etag.encode("ascii").removeprefix(b"W/")
    return any(tag.strip().removeprefix(b"W/") == ours for tag in value.split(b","))


def forwarded_for(existing: list[bytes], client_host: str | None) -> bytes | None:
    """The X-Forwarded-For value to send: the client's own entries with its socket address once."""
    parts = [value.strip() for value in existing if value.strip()]
    if client_host:
        parts.append(client_host.encode("latin-1"))
    return b", ".join(parts) if parts else None


def first_forwarded_address(value: bytes | None) -> str:
    """The first address of an X-Forwarded-For value: Lunary's rate-limit bucket."""
    if not value:
        return ""
    return value.split(b",", 1)[0].strip().decode("latin-1")


def retry_after_seconds(
    value: bytes | None, now: float, default: float = 1.0, longest: float = 3600.0
) -> float:
    """Seconds from a Retry-After value (delta-seconds or an HTTP date), between `default` and
    `longest`; `default` when absent or unusable."""
    if value is None:
        return default
    text = value.decode("latin-1").strip()
    if text.isascii() and text.isdigit():
        seconds = float(text)
    else:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return default
    return min(max(seconds, default), longest)
