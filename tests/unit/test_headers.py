"""Header rules: hop-by-hop filtering, cache directives, validators, X-Forwarded-For."""

from __future__ import annotations

import pytest

from proxy.core.headers import (
    client_directives,
    end_to_end,
    first_forwarded_address,
    forwarded_for,
    hop_by_hop_credential,
    if_none_match_hits,
    not_utf8,
    retry_after_seconds,
)
from proxy.core.model import ClientDirectives


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = [
        (b"connection", b"keep-alive, X-Hop"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"te", b"trailers"),
        (b"content-type", b"application/json"),
        (b"x-other", b"kept"),
    ]

    assert end_to_end(headers) == [(b"content-type", b"application/json"), (b"x-other", b"kept")]
    assert end_to_end(headers, frozenset({b"x-other"})) == [(b"content-type", b"application/json")]


@pytest.mark.parametrize(
    ("cache_control", "pragma", "expected"),
    [
        ([], [], ClientDirectives()),
        ([b"no-cache"], [], ClientDirectives(no_cache=True)),
        ([b"max-age=0"], [], ClientDirectives(no_cache=True)),
        ([b"max-age=10"], [], ClientDirectives()),
        ([b"No-Store"], [], ClientDirectives(no_store=True)),
        ([b"no-cache, no-store"], [], ClientDirectives(no_store=True, no_cache=True)),
        ([], [b"no-cache"], ClientDirectives(no_cache=True)),
        ([b"max-age=5"], [b"no-cache"], ClientDirectives()),  # Cache-Control wins over Pragma
    ],
)
def test_client_directives(
    cache_control: list[bytes], pragma: list[bytes], expected: ClientDirectives
) -> None:
    assert client_directives(cache_control, pragma) == expected


@pytest.mark.parametrize(
    ("header", "hit"),
    [
        (b'"abc"', True),
        (b'W/"abc"', True),
        (b'"x", "abc"', True),
        (b"*", True),
        (b'"abcd"', False),
        (b"abc", False),
    ],
)
def test_if_none_match_uses_weak_comparison(header: bytes, hit: bool) -> None:
    assert if_none_match_hits(header, '"abc"') is hit


def test_forwarded_for_appends_the_socket_address_once() -> None:
    assert forwarded_for([], "10.0.0.1") == b"10.0.0.1"
    assert forwarded_for([b"1.1.1.1, 2.2.2.2"], "10.0.0.1") == b"1.1.1.1, 2.2.2.2, 10.0.0.1"
    assert forwarded_for([b"1.1.1.1", b"2.2.2.2"], "10.0.0.1") == b"1.1.1.1, 2.2.2.2, 10.0.0.1"
    assert forwarded_for([], None) is None
    assert first_forwarded_address(b" 1.1.1.1 , 2.2.2.2") == "1.1.1.1"
    assert first_forwarded_address(None) == ""


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 1.0),
        (b"30", 30.0),
        (b"0", 1.0),  # at least the default: a 429 always cools down a little
        (b"999999", 3600.0),  # at most an hour
        (b"Sun, 22 Nov 2026 10:00:20 GMT", 20.0),
        (b"Sun, 22 Nov 2026 09:00:00 GMT", 1.0),  # in the past
        (b"soon", 1.0),
    ],
)
def test_retry_after(value: bytes | None, seconds: float) -> None:
    now = 1_795_341_600.0  # Sun, 22 Nov 2026 10:00:00 GMT
    assert retry_after_seconds(value, now) == pytest.approx(seconds)


def test_only_forwarded_header_values_must_be_utf8() -> None:
    assert not_utf8([(b"x-title", "café".encode())]) is None
    assert not_utf8([(b"authorization", b"Bearer k\xff")]) == b"authorization"
    assert not_utf8([(b"upgrade", b"\xff"), (b"x-a", b"ok")]) is None  # hop-by-hop
    assert not_utf8([(b"connection", b"x-private"), (b"x-private", b"\xfe")]) is None


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ([(b"connection", b"authorization")], b"authorization"),
        ([(b"connection", b"keep-alive, X-API-Key")], b"x-api-key"),
        ([(b"connection", b"close"), (b"connection", b" Authorization\t")], b"authorization"),
        ([(b"connection", b"keep-alive, x-hop"), (b"authorization", b"Bearer k")], None),
        ([(b"authorization", b"Bearer k"), (b"x-connection", b"authorization")], None),
        ([(b"connection", b"authorization-x, xx-api-key")], None),
    ],
)
def test_a_credential_named_in_connection_is_found(
    headers: list[tuple[bytes, bytes]], named: bytes | None
) -> None:
    """end_to_end would drop it, so the scope would hold a credential Lunary never got."""
    assert hop_by_hop_credential(headers) == named
    if named is not None:
        assert named not in dict(end_to_end([*headers, (named, b"Bearer k")]))
