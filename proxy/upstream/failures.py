"""Why an upstream request failed, in the words of proxy/core/causes.py: read from aiohttp's
exception and from how far the request had got (aiohttp's trace signals say which phase it is
in, so a timeout, whichever timer fired, is named for the phase it cut short)."""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass
from enum import Enum
from types import SimpleNamespace
from typing import Any

import aiohttp

from proxy.core.causes import UpstreamCause, short_message


class Phase(Enum):
    """Where one request stands with the upstream."""

    CONNECT = "connect"  # from the start until a connection is ours: TCP, TLS, a proxy's CONNECT
    POOL = "pool"  # waiting for a pooled connection (PROXY_UPSTREAM_MAX_CONNECTIONS are busy)
    DNS = "dns"  # resolving the host's name
    SEND = "send"  # connected, the request's head going out
    ANSWER = "answer"  # the request is sent: waiting for the answer's head
    BODY = "body"  # the answer's head came: reading its body


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed request: its cause, a short message (never a credential, header value or query)
    and whether it is a timeout (504) rather than an unreachable upstream (502)."""

    cause: UpstreamCause
    detail: str
    timeout: bool = False


@dataclass(slots=True)
class Exchange:
    """One request's progress, kept by the transport and read by the client, whose own deadline
    (the whole answer within the timeout) may cut the request short in any phase."""

    phase: Phase = Phase.CONNECT
    failure: Failure | None = None

    def timed_out(self, within: float | None = None) -> Failure:
        """The failure of a timeout that cut this exchange short, named for its phase."""
        cause, what = _TIMED_OUT[self.phase]
        limit = "" if within is None else f" within {within:g} s"
        return Failure(cause, f"{what}{limit}", timeout=True)


_TIMED_OUT = {
    Phase.CONNECT: (UpstreamCause.CONNECT_TIMEOUT, "no connection (TCP and TLS)"),
    Phase.POOL: (UpstreamCause.POOL_TIMEOUT, "no pooled connection came free"),
    Phase.DNS: (UpstreamCause.DNS, "the host name did not resolve"),
    Phase.SEND: (UpstreamCause.WRITE_TIMEOUT, "the request could not be sent"),
    Phase.ANSWER: (UpstreamCause.READ_TIMEOUT, "no answer"),
    Phase.BODY: (UpstreamCause.READ_TIMEOUT, "the answer's body did not arrive whole"),
}


def phase_trace() -> aiohttp.TraceConfig:
    """aiohttp trace signals that move a request's Exchange (its trace_request_ctx) on."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_queued_start.append(_moves_to(Phase.POOL))
    trace.on_connection_queued_end.append(_moves_to(Phase.CONNECT))
    trace.on_dns_resolvehost_start.append(_moves_to(Phase.DNS))
    trace.on_dns_resolvehost_end.append(_moves_to(Phase.CONNECT))
    trace.on_connection_create_end.append(_moves_to(Phase.SEND))
    trace.on_connection_reuseconn.append(_moves_to(Phase.SEND))
    trace.on_request_headers_sent.append(_moves_to(Phase.ANSWER))
    trace.freeze()
    return trace


def _moves_to(phase: Phase) -> Any:
    async def note(session: aiohttp.ClientSession, context: SimpleNamespace, params: Any) -> None:
        exchange = context.trace_request_ctx
        if isinstance(exchange, Exchange):
            exchange.phase = phase

    return note


def failure_of(exc: BaseException, phase: Phase) -> Failure:
    """The cause of an aiohttp (or socket) error raised in `phase`, its message fit for a log
    line (proxy/core/causes.py: one line, bounded, no URL but its host)."""
    found = _failure_of(exc, phase)
    return Failure(found.cause, short_message(found.detail), found.timeout)


def _failure_of(exc: BaseException, phase: Phase) -> Failure:
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return Failure(UpstreamCause.PROXY, f"the egress proxy answered CONNECT {exc.status}")
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return Failure(UpstreamCause.PROXY, f"the egress proxy {_where(exc)}: {exc.os_error}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return Failure(UpstreamCause.TLS, f"{_where(exc)}: {exc.certificate_error}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Failure(UpstreamCause.DNS, f"{_where(exc)}: {exc.os_error}")
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, TLS, reset
        return _os_failure(exc.os_error, f"{_where(exc)}: ")
    if isinstance(exc, aiohttp.SocketTimeoutError):  # a read that waited the whole timeout
        return Failure(UpstreamCause.READ_TIMEOUT, _TIMED_OUT[phase][1], timeout=True)
    if isinstance(exc, TimeoutError):  # connecting, the pool, or a deadline: named by phase
        return Exchange(phase).timed_out()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        if phase is Phase.BODY:
            return Failure(UpstreamCause.PROTOCOL, "the connection closed within the answer")
        return Failure(UpstreamCause.RESET, "the connection closed before any answer")
    if isinstance(exc, aiohttp.ClientPayloadError):  # the body cut short, or badly framed
        return Failure(UpstreamCause.PROTOCOL, str(exc))
    if isinstance(exc, aiohttp.ClientResponseError):  # an answer that is not HTTP/1.1
        return Failure(UpstreamCause.PROTOCOL, f"not an HTTP answer: {exc.message}")
    if isinstance(exc, OSError):  # aiohttp's ClientOSError among them
        return _os_failure(exc)
    return Failure(UpstreamCause.OTHER, str(exc) or type(exc).__name__)


def _os_failure(exc: BaseException, where: str = "") -> Failure:
    message = where + (str(exc) or type(exc).__name__)
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(exc, ssl.SSLError):
        cause = UpstreamCause.TLS
    elif isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        cause = UpstreamCause.REFUSED
    elif isinstance(exc, ConnectionError) or code in _RESETS:
        cause = UpstreamCause.RESET
    elif isinstance(exc, socket.gaierror):
        cause = UpstreamCause.DNS
    else:
        cause = UpstreamCause.OTHER
    return Failure(cause, message)


_RESETS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def _where(exc: aiohttp.ClientConnectorError) -> str:
    return f"{exc.host}:{exc.port}"
