"""Scopes: keyed digests of the credential headers that never collide across credentials."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.scope import ANONYMOUS, REMEMBERED_SCOPES, ScopeHasher

hasher = ScopeHasher(b"secret-one")
header_value = st.one_of(st.none(), st.binary(max_size=64))


def test_no_credential_is_anonymous() -> None:
    assert hasher.scope(None, None) == ANONYMOUS


def test_scope_is_stable_and_hides_the_credential() -> None:
    key = b"Bearer 6f1c7a52-1f0e-4c52-9d9b-6f3b1e1f0a11"
    scope = hasher.scope(key, None)

    assert scope == hasher.scope(key, None)
    assert "6f1c7a52" not in scope
    assert len(scope) == 43  # 256-bit HMAC, base64url without padding


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((b"Bearer k", None), (None, b"Bearer k")),  # same bytes, other header
        ((b"", None), (None, None)),  # empty vs absent
        ((b"", None), (None, b"")),
        ((b"ab", b"c"), (b"a", b"bc")),  # bytes moved across the boundary
        ((b"Bearer k", b"k"), (b"Bearer k", None)),
    ],
)
def test_distinct_header_pairs_get_distinct_scopes(
    a: tuple[bytes | None, bytes | None], b: tuple[bytes | None, bytes | None]
) -> None:
    assert hasher.scope(*a) != hasher.scope(*b)


def test_scope_depends_on_the_secret() -> None:
    assert ScopeHasher(b"secret-two").scope(b"k", None) != hasher.scope(b"k", None)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        ScopeHasher(b"")


@given(header_value, header_value, header_value, header_value)
def test_two_different_credential_pairs_never_share_a_scope(
    auth_a: bytes | None, key_a: bytes | None, auth_b: bytes | None, key_b: bytes | None
) -> None:
    if (auth_a, key_a) != (auth_b, key_b):
        assert hasher.scope(auth_a, key_a) != hasher.scope(auth_b, key_b)


def test_remembered_scopes_are_the_digests_and_stay_right_past_the_bound() -> None:
    remembering, fresh = ScopeHasher(b"secret"), ScopeHasher(b"secret")
    pairs: list[tuple[bytes | None, bytes | None]]
    pairs = [(b"Bearer %d" % n, None) for n in range(REMEMBERED_SCOPES + 10)]
    pairs += [(None, b"key"), (b"key", None), (b"", b"key")]

    first = [remembering.scope(*pair) for pair in pairs]
    again = [remembering.scope(*pair) for pair in reversed(pairs)][::-1]

    assert first == again
    assert all(
        first[n] == ScopeHasher(b"secret").scope(*pair) for n, pair in enumerate(pairs[-20:], -20)
    )
    assert fresh.scope(*pairs[-1]) == first[-1]
    assert len(set(first)) == len(pairs)  # no two credential pairs share a scope
