"""The cause vocabulary: what an error's message may carry into a log line, and how redis-py's
and aiohttp's errors are named."""

from __future__ import annotations

import errno
import socket
import ssl

import aiohttp
import pytest
from redis import exceptions as rx

from proxy.cache.ports import StoreError
from proxy.core.causes import MAX_MESSAGE, StoreCause, UpstreamCause, short_message
from proxy.store.causes import store_cause, store_error
from proxy.upstream.failures import Exchange, Phase, failure_of


def test_a_url_keeps_its_host_only() -> None:
    text = "Connection timeout to host https://user:pw@api.example:8443/v1/runs?api_key=SECRET"
    assert short_message(text) == "Connection timeout to host https://api.example:8443"


def test_a_message_is_one_bounded_line() -> None:
    assert short_message("bad\r\nline\x00 here  ") == "bad line here"
    long = short_message("x" * 1000)
    assert len(long) == MAX_MESSAGE
    assert long.endswith("...")


@pytest.mark.parametrize(
    ("phase", "cause"),
    [
        (Phase.CONNECT, UpstreamCause.CONNECT_TIMEOUT),
        (Phase.POOL, UpstreamCause.POOL_TIMEOUT),
        (Phase.DNS, UpstreamCause.DNS),
        (Phase.SEND, UpstreamCause.WRITE_TIMEOUT),
        (Phase.ANSWER, UpstreamCause.READ_TIMEOUT),
        (Phase.BODY, UpstreamCause.READ_TIMEOUT),
    ],
)
def test_a_timeout_is_named_for_the_phase_it_cut(phase: Phase, cause: UpstreamCause) -> None:
    failure = Exchange(phase).timed_out(0.5)
    assert (failure.cause, failure.timeout) == (cause, True)
    assert failure.detail.endswith("within 0.5 s")
    assert failure_of(aiohttp.ConnectionTimeoutError("to host http://h/?k=SECRET"), phase) == (
        Exchange(phase).timed_out()
    )


def test_a_close_is_a_reset_before_the_answer_and_a_protocol_error_within_it() -> None:
    closed = aiohttp.ServerDisconnectedError()
    assert failure_of(closed, Phase.ANSWER).cause is UpstreamCause.RESET
    assert failure_of(closed, Phase.BODY).cause is UpstreamCause.PROTOCOL


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"), UpstreamCause.RESET),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), UpstreamCause.REFUSED),
        (ssl.SSLError(1, "bad record mac"), UpstreamCause.TLS),
        (aiohttp.ClientPayloadError("Response payload is not completed"), UpstreamCause.PROTOCOL),
        (OSError(errno.EHOSTUNREACH, "No route to host"), UpstreamCause.OTHER),
    ],
)
def test_os_and_aiohttp_errors(error: BaseException, cause: UpstreamCause) -> None:
    failure = failure_of(error, Phase.ANSWER)
    assert (failure.cause, failure.timeout) == (cause, False)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (rx.AuthenticationError("invalid username-password pair"), StoreCause.AUTH),
        (rx.ResponseError("NOAUTH Authentication required."), StoreCause.AUTH),
        (rx.ReadOnlyError("You can't write against a read only replica."), StoreCause.READONLY),
        (
            rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
            StoreCause.OOM,
        ),
        (rx.ResponseError("MISCONF Redis is configured to save RDB snapshots"), StoreCause.MISCONF),
        (rx.ResponseError("WRONGTYPE Operation against a key"), StoreCause.WRONGTYPE),
        (rx.BusyLoadingError("Redis is loading the dataset in memory"), StoreCause.LOADING),
        (rx.ClusterDownError("The cluster is down"), StoreCause.CLUSTER),
        (rx.TimeoutError("Timeout reading from 127.0.0.1:6379"), StoreCause.TIMEOUT),
        (TimeoutError(), StoreCause.TIMEOUT),
        (rx.InvalidResponse("Protocol Error: H"), StoreCause.PROTOCOL),
        (rx.ConnectionError("Connection closed by server."), StoreCause.RESET),
    ],
)
def test_redis_errors(error: BaseException, cause: StoreCause) -> None:
    assert store_cause(error) is cause


@pytest.mark.parametrize(
    ("origin", "cause"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), StoreCause.REFUSED),
        (socket.gaierror(-2, "Name or service not known"), StoreCause.DNS),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), StoreCause.TLS),
        (ConnectionResetError(errno.ECONNRESET, "reset"), StoreCause.RESET),
    ],
)
def test_a_connection_error_is_named_by_the_os_error_under_it(
    origin: OSError, cause: StoreCause
) -> None:
    """redis-py raises its ConnectionError while handling the OS error (its __context__)."""
    raised = rx.ConnectionError("Error connecting to 127.0.0.1:6379.")
    raised.__context__ = origin
    assert store_cause(raised) is cause


def test_a_store_error_is_named_by_what_redis_py_raised() -> None:
    classified = store_error(
        "ping", rx.AuthenticationError("invalid username-password pair or user is disabled.")
    )
    assert classified.cause is StoreCause.AUTH
    assert classified.detail == "invalid username-password pair or user is disabled."
    assert StoreError("unclassified").cause is StoreCause.OTHER
