"""Why a store call failed, in the words of proxy/core/causes.py: read from what redis-py (or the
call's timeout) raised and the OS error under it, when the StoreError is made."""

from __future__ import annotations

import socket
import ssl

from redis import exceptions as rx

from proxy.cache.ports import ForeignValue, StoreError, StoreRefused
from proxy.core.causes import StoreCause, short_message

# a server's error reply, by its first word (redis-py gives some their own class, not all,
# and not on every client: a Cluster node's reply may come as a plain ResponseError)
_REPLIES = {
    "OOM": StoreCause.OOM,
    "MISCONF": StoreCause.MISCONF,
    "READONLY": StoreCause.READONLY,
    "WRONGTYPE": StoreCause.WRONGTYPE,
    "LOADING": StoreCause.LOADING,
    "BUSY": StoreCause.BUSY,
    "NOAUTH": StoreCause.AUTH,
    "WRONGPASS": StoreCause.AUTH,
    "NOPERM": StoreCause.AUTH,
    "CLUSTERDOWN": StoreCause.CLUSTER,
    "TRYAGAIN": StoreCause.CLUSTER,
    "MOVED": StoreCause.CLUSTER,
    "ASK": StoreCause.CLUSTER,
    "MASTERDOWN": StoreCause.CLUSTER,
}
# redis-py's classes, most specific first (an AuthenticationError is a ConnectionError)
_CLASSES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], StoreCause], ...] = (
    ((rx.AuthenticationError, rx.AuthorizationError, rx.NoPermissionError), StoreCause.AUTH),
    (rx.AuthenticationWrongNumberOfArgsError, StoreCause.AUTH),
    (rx.BusyLoadingError, StoreCause.LOADING),
    (rx.ReadOnlyError, StoreCause.READONLY),
    (rx.OutOfMemoryError, StoreCause.OOM),
    ((rx.ClusterError, rx.RedisClusterException, rx.AskError), StoreCause.CLUSTER),
    (rx.TryAgainError, StoreCause.CLUSTER),
    (rx.InvalidResponse, StoreCause.PROTOCOL),
    ((rx.TimeoutError, TimeoutError), StoreCause.TIMEOUT),  # redis-py's, and the call's bound
)  # fmt: skip


def store_error(operation: str, exc: BaseException) -> StoreError:
    """What a failed call raises, named by its cause: StoreRefused when Redis is up but refuses
    writes (out of memory under `noeviction`, or unable to persist), ForeignValue for a value of
    another type under one of our keys; else a StoreError, and the breaker skips the store for
    a while (down, slow, CLUSTERDOWN, TRYAGAIN, BUSY, READONLY...)."""
    cause = store_cause(exc)
    detail = short_message(str(exc)) or _SILENT.get(cause, type(exc).__name__)
    kind = _KINDS.get(cause, StoreError)
    return kind(f"{operation} failed: {type(exc).__name__}", cause, detail)


_KINDS: dict[StoreCause, type[StoreError]] = {
    StoreCause.OOM: StoreRefused,
    StoreCause.MISCONF: StoreRefused,
    StoreCause.WRONGTYPE: ForeignValue,
}
_SILENT = {StoreCause.TIMEOUT: "no answer within the store timeout"}


def store_cause(exc: BaseException) -> StoreCause:
    """The cause of what redis-py raised (or the call's timeout)."""
    for kind, cause in _CLASSES:
        if isinstance(exc, kind):
            return cause
    if isinstance(exc, rx.ResponseError):
        text = str(exc)
        found = _REPLIES.get(text.split(" ", 1)[0])
        if found is None and "WRONGTYPE" in text:  # raised in a script, as Redis 6 words it
            found = StoreCause.WRONGTYPE
        return found or StoreCause.OTHER
    for origin in _chain(exc):  # a ConnectionError, and the OS error it was made from
        found = _os_cause(origin)
        if found is not None:
            return found
    if isinstance(exc, rx.ConnectionError):
        return StoreCause.RESET  # "Connection closed by server", and the like
    return StoreCause.OTHER


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 8:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _os_cause(exc: BaseException) -> StoreCause | None:
    if isinstance(exc, ssl.SSLError):
        return StoreCause.TLS
    if isinstance(exc, ConnectionRefusedError):
        return StoreCause.REFUSED
    if isinstance(exc, socket.gaierror):
        return StoreCause.DNS
    if isinstance(exc, ConnectionError | BrokenPipeError | EOFError):
        return StoreCause.RESET
    if isinstance(exc, TimeoutError):
        return StoreCause.TIMEOUT
    return None
