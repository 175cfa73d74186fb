"""Why a call to the upstream or the store failed: one token per cause, spelt the same in the log
field, the metric label, the access line and `Cache-Status; detail=` (an RFC 8941 token)."""

from __future__ import annotations

import re
from enum import StrEnum

MAX_MESSAGE = 200
# a URL's scheme and authority are kept (host:port helps); any user info, path or query is not
_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?:[^@/\s'\"<>]*@)?(?P<host>[^/\s'\"<>?#]*)"
                  r"[^\s'\"<>]*", re.IGNORECASE)  # fmt: skip
_SPACE = re.compile(r"\s+")


class UpstreamCause(StrEnum):
    """Why the proxy got no answer from Lunary (a timeout is 504, anything else 502)."""

    DNS = "dns"  # the upstream's (or egress proxy's) name did not resolve, or resolving timed out
    REFUSED = "refused"  # nothing listens at the upstream's address (connection refused)
    TLS = "tls"  # the TLS handshake failed: certificate not trusted, wrong name, protocol
    CONNECT_TIMEOUT = "connect_timeout"  # no connection (TCP and TLS) within the timeout
    POOL_TIMEOUT = "pool_timeout"  # every pooled connection stayed busy for the whole timeout
    WRITE_TIMEOUT = "write_timeout"  # the upstream stopped reading the request (its body)
    READ_TIMEOUT = "read_timeout"  # the answer (or the rest of it) did not come in time
    RESET = "reset"  # the connection was reset or closed before the answer came
    PROTOCOL = "protocol"  # the answer was not valid HTTP/1.1, or was cut short
    PROXY = "proxy"  # the egress proxy (HTTPS_PROXY) could not be reached or refused CONNECT
    CLOSED = "closed"  # the proxy is shutting down: its upstream client is closed
    OTHER = "other"  # anything else: the message says what


class StoreCause(StrEnum):
    """Why a Redis call failed: what an operator should look at first."""

    REFUSED = "refused"  # nothing listens at the Redis address
    DNS = "dns"  # the Redis host name did not resolve
    TLS = "tls"  # the TLS handshake failed (certificate, rediss:// against a plain port)
    AUTH = "auth"  # wrong or missing password or user (WRONGPASS, NOAUTH, NOPERM)
    TIMEOUT = "timeout"  # no answer within PROXY_REDIS_TIMEOUT (slow, paused, partitioned)
    RESET = "reset"  # the connection was reset or closed under the call
    READONLY = "readonly"  # the node is a replica (a failover demoted it)
    OOM = "oom"  # out of memory under `maxmemory-policy noeviction`: writes refused
    MISCONF = "misconf"  # Redis cannot persist (stop-writes-on-bgsave-error): writes refused
    LOADING = "loading"  # Redis is loading its dataset after a restart
    BUSY = "busy"  # a script or module command is blocking the server
    CLUSTER = "cluster"  # the Cluster is down, resharding or its slot map is changing
    WRONGTYPE = "wrongtype"  # a value of another type sits under one of the proxy's keys
    PROTOCOL = "protocol"  # an answer that is not RESP (not Redis at that address?)
    OTHER = "other"  # anything else: the message says what


def short_message(text: str) -> str:
    """An error's own words fit for a log line: one line, bounded, and any URL cut to its
    scheme and host (a query or user info might carry a credential)."""
    text = _URL.sub(lambda m: m.group("scheme") + m.group("host"), text)
    text = _SPACE.sub(" ", "".join(c if c.isprintable() else " " for c in text)).strip()
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return text
