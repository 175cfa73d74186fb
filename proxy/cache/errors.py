"""The answers the proxy makes itself, shaped like Lunary's errors: {"error", "message"}."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson

from proxy.cache.ports import UpstreamError, UpstreamTimeout
from proxy.core.headers import Header

JSON_TYPE = b"application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class ProxyErrorReply:
    """A status and a JSON error body, plus any extra headers (Allow, Retry-After), and the
    cause token (proxy/core/causes.py) when the failure has one."""

    status: int
    error: str
    message: str
    headers: tuple[Header, ...] = field(default=())
    cause: str | None = None

    def body(self) -> bytes:
        body = {"error": self.error, "message": self.message}
        if self.cause is not None:
            body["cause"] = self.cause
        return orjson.dumps(body)


def bad_path(message: str) -> ProxyErrorReply:
    return ProxyErrorReply(400, "bad_request", f"Rejected request path: {message}.")


def bad_header(name: bytes) -> ProxyErrorReply:
    """The value is never echoed: it may be a credential."""
    shown = name.decode("ascii", "replace")
    return ProxyErrorReply(
        400, "bad_request", f"The value of the {shown} header is not valid UTF-8."
    )


def hop_by_hop_credential(name: bytes) -> ProxyErrorReply:
    shown = name.decode("ascii")
    return ProxyErrorReply(
        400,
        "bad_request",
        f"The Connection header names {shown}: a credential must reach Lunary, so it may not "
        "be a hop-by-hop header.",
    )


def admin_token_in_query() -> ProxyErrorReply:
    return ProxyErrorReply(
        400,
        "bad_request",
        "The query string carries the proxy's admin token, which is never sent to Lunary.",
    )


def admin_token_carried(name: bytes) -> ProxyErrorReply:
    """Only the header's name is shown, never its value."""
    shown = name.decode("ascii", "replace")
    return ProxyErrorReply(
        400,
        "bad_request",
        f"The {shown} header carries the proxy's admin token, which is never sent to Lunary: "
        "it is accepted on DELETE /admin/cache/runs/{id} only.",
    )


def reserved_path() -> ProxyErrorReply:
    return ProxyErrorReply(
        404,
        "not_found",
        "This path is reserved for the proxy's own endpoints and never forwarded; the purge "
        "route is spelled exactly /admin/cache/runs/{id}.",
    )


def upstream_unreachable(cause: str | None = None) -> ProxyErrorReply:
    return ProxyErrorReply(
        502, "upstream_unreachable", "The Lunary API could not be reached.", cause=cause
    )


def upstream_timeout(cause: str | None = None) -> ProxyErrorReply:
    return ProxyErrorReply(
        504, "upstream_timeout", "The Lunary API did not answer in time.", cause=cause
    )


def upstream_failure(exc: UpstreamError) -> ProxyErrorReply:
    """504 for a timeout, else 502: the one place upstream failures become answers. The body
    names the cause; the failure's own words are in the proxy's log, not sent to clients."""
    if isinstance(exc, UpstreamTimeout):
        return upstream_timeout(exc.cause.value)
    return upstream_unreachable(exc.cause.value)


def request_too_large(limit: int) -> ProxyErrorReply:
    return ProxyErrorReply(
        413, "payload_too_large", f"The request body is larger than {limit} bytes."
    )


def rate_limited(remaining: float) -> ProxyErrorReply:
    """429 with the cooldown's remaining whole seconds (at least 1) as Retry-After."""
    retry_after = max(1, math.ceil(remaining))
    return ProxyErrorReply(
        429,
        "rate_limited",
        f"The Lunary API rate limit was reached; retry after {retry_after} s.",
        ((b"retry-after", b"%d" % retry_after),),
    )


def not_found() -> ProxyErrorReply:
    return ProxyErrorReply(404, "not_found", "This proxy does not forward that path.")


def method_not_allowed(
    allowed: bytes, message: str = "Only GET and HEAD are served on this route."
) -> ProxyErrorReply:
    return ProxyErrorReply(405, "method_not_allowed", message, ((b"allow", allowed),))


def not_ready(reason: str, cause: str | None = None) -> ProxyErrorReply:
    return ProxyErrorReply(503, "not_ready", reason, cause=cause)


def not_started() -> ProxyErrorReply:
    """Before the lifespan has opened the store and the upstream pools, or after it closed them."""
    return not_ready("the proxy is starting or stopping")


def internal_error() -> ProxyErrorReply:
    """An exception the proxy did not expect: the client gets JSON, the log the traceback."""
    return ProxyErrorReply(
        500, "internal_error", "The proxy failed to answer this request; see its log."
    )
