"""The admin token is found in any header that carries it, and ordinary credentials pass."""

from __future__ import annotations

import pytest

from proxy.web.admin import token_carrier

TOKEN = b"lcp-admin-7f3c9a21"
KEY = b"6f1c7a52-1f0e-4c52-9d9b-6f3b1e1f0a11"


@pytest.mark.parametrize(
    ("header", "carried"),
    [
        ((b"authorization", b"Bearer " + TOKEN), True),
        ((b"authorization", b"bearer  " + TOKEN + b" "), True),
        ((b"authorization", TOKEN), True),
        ((b"authorization", b"Token " + TOKEN), True),
        ((b"x-api-key", TOKEN), True),
        ((b"proxy-authorization", b"Bearer " + TOKEN), True),
        ((b"cookie", b"theme=dark; admin=" + TOKEN), True),
        ((b"x-title", b"see " + TOKEN + b", please"), True),
        ((b"referer", b"https://example.test/?token=" + TOKEN + b"&a=1"), True),
        ((b"authorization", b"Bearer " + KEY), False),
        ((b"x-api-key", KEY), False),
        ((b"authorization", b"Bearer " + TOKEN + b"x"), False),
        ((b"authorization", b"Bearer " + TOKEN[:-1]), False),
        ((b"x-title", TOKEN.upper()), False),
        ((b"x-empty", b""), False),
    ],
)
def test_a_header_carrying_the_admin_token_is_named(
    header: tuple[bytes, bytes], carried: bool
) -> None:
    headers = [(b"host", b"proxy"), (b"accept", b"*/*"), header]

    assert token_carrier(headers, TOKEN) == (header[0] if carried else None)


@pytest.mark.parametrize(
    ("token", "header"),
    [
        (b"dG9rZW4/Zm9yLWFkbWlu==", (b"authorization", b"Bearer dG9rZW4/Zm9yLWFkbWlu==")),
        (b"dG9rZW4/Zm9yLWFkbWlu==", (b"x-other", b"a, dG9rZW4/Zm9yLWFkbWlu==")),
        (b"an admin token", (b"authorization", b"Bearer an admin token")),
        (b"an admin token", (b"x-api-key", b" an admin token")),
    ],
)
def test_tokens_holding_separators_are_found_whole(
    token: bytes, header: tuple[bytes, bytes]
) -> None:
    """A base64 token (`/`, `=`) or one with spaces is not cut at its own characters."""
    assert token_carrier([header], token) == header[0]
