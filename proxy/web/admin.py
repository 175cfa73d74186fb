"""The purge route, `DELETE /admin/cache/runs/{id}`, behind a bearer token."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

import orjson

from proxy.cache import errors
from proxy.cache.errors import ProxyErrorReply
from proxy.cache.invalidation import Invalidator
from proxy.core.headers import Header, first_value
from proxy.core.paths import unquote_segment
from proxy.core.runs import canonical_run_id

PURGE_PREFIX = b"/admin/cache/runs/"
# Where a header value is cut into words to look for the admin token: at whitespace and the
# separators of HTTP lists, then of cookies, `key=value` pairs and URLs, unless the token holds one.
_LIST_SEPARATORS = bytes.maketrans(b",", b" ")
_WORD_SEPARATORS = bytes.maketrans(b",;:=\"'&?/", b" " * 9)


class Admin:
    """Answers the admin surface; off (404) when no token is configured."""

    def __init__(self, token: str, invalidator: Invalidator) -> None:
        self._token = token.encode()
        self._invalidator = invalidator

    async def handle(
        self, method: str, raw_path: bytes, headers: list[Header]
    ) -> bytes | ProxyErrorReply:
        """The 200 body of a purge, or the error to answer instead."""
        if not self._token:
            return errors.not_found()
        if not raw_path.startswith(PURGE_PREFIX):  # exact spelling only
            return errors.reserved_path()
        refused = self._refuse(headers)
        if refused is not None:
            return refused
        if method != "DELETE":
            return errors.method_not_allowed(b"DELETE", "Only DELETE is served on this route.")
        run_id = canonical_run_id(unquote_segment(raw_path[len(PURGE_PREFIX) :]))
        if run_id is None:
            return errors.ProxyErrorReply(400, "bad_request", "The run id is not a UUID.")
        if not await self._invalidator.run(run_id, "admin"):
            return errors.not_ready("the store did not answer; nothing was dropped")
        return orjson.dumps({"run_id": run_id, "invalidated": True})

    def _refuse(self, headers: list[Header]) -> ProxyErrorReply | None:
        authorization = first_value(headers, b"authorization")
        scheme, _, presented = (authorization or b"").partition(b" ")
        if authorization is None or scheme.lower() != b"bearer":
            return errors.ProxyErrorReply(
                401,
                "unauthorized",
                "A bearer token is required.",
                ((b"www-authenticate", b'Bearer realm="lunary-cache-proxy"'),),
            )
        if not hmac.compare_digest(presented.strip(), self._token):
            return errors.ProxyErrorReply(403, "forbidden", "The bearer token is not valid.")
        return None


def token_carrier(headers: Iterable[Header], token: bytes) -> bytes | None:
    """The name of the first header that carries the admin `token`, or None.

    A value carries it when the value, the value after an auth scheme (`Bearer <token>`), or
    one of its words is the token. Every candidate of the token's length is compared in
    constant time; an ordinary Lunary credential, never equal to the token, always passes.
    """
    size = len(token)
    separators = (
        _WORD_SEPARATORS if token.translate(_WORD_SEPARATORS) == token else _LIST_SEPARATORS
    )
    for name, value in headers:
        if len(value) < size:
            continue
        for candidate in _candidates(value, separators):
            if len(candidate) == size and hmac.compare_digest(candidate, token):
                return name
    return None


def query_carries(query_string: bytes, token: bytes) -> bool:
    """Whether the query string, percent-decoded, carries the admin `token` (as a headers
    value would: whole, or as one of its words)."""
    if len(query_string) < len(token) // 3:  # not even every byte as a %XX escape
        return False
    decoded = unquote_to_bytes(query_string.replace(b"+", b" "))
    return token_carrier(((b"", decoded),), token) is not None


def _candidates(value: bytes, separators: bytes) -> list[bytes]:
    value = value.strip()
    return [value, value.partition(b" ")[2].strip(), *value.translate(separators).split()]
