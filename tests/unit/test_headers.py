"""Header rules: hop-by-hop filtering, cache directives, validators, X-Forwarded-For."""

from __future__ import annotations

import pytest

from proxy.headers import (
    client_directives,
    end_to_end,
    first_forwarded_address,
    forwarded_for,
    if_none_match_hits,
)
from proxy.model import ClientDirectives


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
