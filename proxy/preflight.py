"""`--check-config --connect`: reach the upstream and Redis as the proxy would, once, bounded,
and say per step what answered and why not, with no credential in the words."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

from redis.exceptions import RedisError

from config import Settings
from config.masking import MASK, masked_url
from proxy.store.connection import close_client, connect
from proxy.upstream.session import EnvProxy
from proxy.upstream.tls import upstream_tls

# each step (a lookup, a connection, a handshake, a PING) gets this long
STEP_TIMEOUT = 5.0

Outcome = Literal["ok", "FAIL", "skip"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Check:
    """One step's result, printed as one line."""

    name: str
    outcome: Outcome
    detail: str

    def line(self) -> str:
        return f"{self.outcome:<4} {self.name:<17} {self.detail}"


def url_secrets(url: str) -> list[str]:
    """The passwords a URL carries, as written and decoded: scrubbed from error messages."""
    parts = urlsplit(url)
    params = (param.partition("=") for param in parts.query.split("&"))
    found = [parts.password or "", *(v for name, _, v in params if "password" in name.lower())]
    return sorted({s for raw in found if raw for s in (raw, unquote(raw))}, key=len, reverse=True)


async def run_checks(settings: Settings) -> list[Check]:
    """The upstream's lookup, connection and TLS handshake, and Redis's PING, side by side."""
    upstream, store = await asyncio.gather(
        upstream_checks(settings.upstream_url, settings.upstream_ca_file), redis_check(settings)
    )
    return [*upstream, store]


async def upstream_checks(url: str, ca_file: str = "") -> list[Check]:
    """Resolve the upstream's host, connect to it, and for https verify its certificate with
    the upstream client's own TLS context (the system's CAs, and `ca_file`'s)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    forward = EnvProxy.for_upstream(url).url
    if forward is not None:  # the proxy reaches the upstream through it: check the first hop
        shown = masked_url(str(forward))
        host, port = forward.host or "", forward.port or 80
        via = f" (forward proxy {shown})"
    else:
        via = ""
    try:
        addresses = await _resolve(host, port)
    except (OSError, TimeoutError) as exc:
        return [
            Check("upstream resolve", "FAIL", f"{host}{via}: {reason(exc)}"),
            Check("upstream connect", "skip", "no address"),
            Check("upstream tls", "skip", "no address"),
        ]
    resolved = Check("upstream resolve", "ok", f"{host}{via} -> {', '.join(addresses)}")
    try:
        address, writer = await _first_connection(addresses, port)
    except (OSError, TimeoutError) as exc:
        failed = Check("upstream connect", "FAIL", f"{host}:{port}: {reason(exc)}")
        return [resolved, failed, Check("upstream tls", "skip", "not connected")]
    try:
        connected = Check("upstream connect", "ok", f"{address} port {port}")
        if parts.scheme != "https":
            return [resolved, connected, Check("upstream tls", "skip", "http:// upstream")]
        if forward is not None:
            return [resolved, connected, Check("upstream tls", "skip", "through a forward proxy")]
        return [resolved, connected, await _handshake(writer, parts.hostname or "", ca_file)]
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await _bounded(writer.wait_closed())


async def _resolve(host: str, port: int) -> list[str]:
    infos = await _bounded(
        asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _first_connection(addresses: list[str], port: int) -> tuple[str, asyncio.StreamWriter]:
    """A connection to the first address that takes one (the last one's error otherwise)."""
    error: BaseException = OSError("no address")
    for address in addresses:
        try:
            _, writer = await _bounded(asyncio.open_connection(address, port))
        except (OSError, TimeoutError) as exc:
            error = exc
            continue
        return address, writer
    raise error


async def _handshake(writer: asyncio.StreamWriter, server_name: str, ca_file: str) -> Check:
    try:
        context = upstream_tls(ca_file)
        await _bounded(writer.start_tls(context, server_hostname=server_name))
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        return Check("upstream tls", "FAIL", f"{server_name}: {reason(exc)}")
    tls = writer.get_extra_info("ssl_object")
    version = tls.version() if isinstance(tls, ssl.SSLObject) else "TLS"
    return Check("upstream tls", "ok", f"certificate verified for {server_name} ({version})")


async def redis_check(settings: Settings) -> Check:
    """PING through the store's own client (TLS, unix, Sentinel and Cluster URLs alike): once
    to connect, then once more timed against PROXY_REDIS_TIMEOUT, which every call must meet."""
    url = settings.redis_url
    if not url:
        return Check("redis", "skip", "PROXY_REDIS_URL is not set: the in-memory store")
    shown = masked_url(url)
    try:
        client = connect(url, cluster=settings.redis_cluster, timeout=STEP_TIMEOUT, retries=0)
    except (RedisError, ValueError) as exc:
        return Check("redis", "FAIL", _scrubbed(f"{shown}: {reason(exc)}", url))
    try:
        await _bounded(client.ping())
        start = time.perf_counter()
        await _bounded(client.ping())
        took = time.perf_counter() - start
    except (RedisError, OSError, TimeoutError, ValueError) as exc:
        return Check("redis", "FAIL", _scrubbed(f"{shown}: {reason(exc)}", url))
    finally:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await _bounded(close_client(client))
    answered = f"{shown} answered PING in {took * 1000:.1f} ms"
    if took > settings.redis_timeout:
        limit = f"over PROXY_REDIS_TIMEOUT ({settings.redis_timeout:g} s)"
        return Check("redis", "FAIL", f"{answered}, {limit}: requests would bypass the store")
    return Check("redis", "ok", answered)


async def _bounded(step: Awaitable[T]) -> T:
    return await asyncio.wait_for(step, STEP_TIMEOUT)


def reason(exc: BaseException) -> str:
    """A short why: the OS's words for a socket error, the verifier's for a certificate."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {STEP_TIMEOUT:g} s"
    if isinstance(exc, socket.gaierror):
        return str(exc.strerror)
    if isinstance(exc, OSError) and exc.errno:  # asyncio's own words hide the OS's
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def _scrubbed(text: str, url: str) -> str:
    for secret in url_secrets(url):
        text = text.replace(secret, MASK)
    return text
