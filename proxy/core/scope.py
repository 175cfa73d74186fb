"""Credential headers -> an HMAC scope. Nothing else in the proxy ever holds a raw credential."""

from __future__ import annotations

import hmac
from base64 import urlsafe_b64encode

ANONYMOUS = "anon"
# Scopes remembered per credential pair: a hit from the in-process tier costs a few microseconds,
# and the HMAC was a tenth of them (py-spy, README Performance). Bounded; emptied when full.
REMEMBERED_SCOPES = 4096


class ScopeHasher:
    """Derives the cache scope of a request from its `Authorization` and `X-API-Key` values."""

    __slots__ = ("_key", "_known")

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("scope secret must not be empty")
        self._key = secret
        # in this process's memory only, as the request headers themselves are: never logged,
        # stored or exported; compared by equality, so two credentials never share a scope
        self._known: dict[tuple[bytes | None, bytes | None], str] = {}

    def scope(self, authorization: bytes | None, api_key: bytes | None) -> str:
        """`anon` when neither header is present, else a keyed digest of both values.

        Each value is length-prefixed with a presence flag, so no two distinct header pairs
        (absent vs empty, or bytes moved between the two headers) feed the HMAC the same input.
        """
        if authorization is None and api_key is None:
            return ANONYMOUS
        pair = (authorization, api_key)
        known = self._known.get(pair)
        if known is not None:
            return known
        message = _frame(authorization) + _frame(api_key)
        digest = hmac.digest(self._key, message, "sha256")  # one-shot: no HMAC object
        scope = urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        if len(self._known) >= REMEMBERED_SCOPES:
            self._known.clear()
        self._known[pair] = scope
        return scope


def _frame(value: bytes | None) -> bytes:
    if value is None:
        return b"\x00"
    return b"\x01" + len(value).to_bytes(4, "big") + value
