"""Thin ASGI plumbing: typed aliases and the helpers that send a whole or streamed response."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from proxy.cache.errors import JSON_TYPE, ProxyErrorReply
from proxy.cache.ports import UpstreamError
from proxy.core.headers import Header

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
log = logging.getLogger("proxy")


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


async def send_whole(
    send: Send, status: int, headers: list[Header], body: bytes, *, head: bool = False
) -> None:
    """Send a response whose body is known, with its Content-Length (HEAD: length, no body).

    A 304 carries no Content-Length: it would have to be the 200's, and a 0 misleads caches.
    """
    if status != 304:
        headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_streamed(
    send: Send, status: int, headers: list[Header], first: bytes, rest: AsyncIterator[bytes]
) -> None:
    """Send `first`, then every chunk of `rest` as it arrives."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if first:
        await send({"type": "http.response.body", "body": first, "more_body": True})
    async for chunk in rest:
        if chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def send_error(send: Send, failure: ProxyErrorReply) -> None:
    headers = [(b"content-type", JSON_TYPE), *failure.headers]
    await send_whole(send, failure.status, headers, failure.body())


async def request_body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as the server delivers it."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def has_body(headers: list[Header]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def relay(
    send: Send,
    status: int,
    headers: list[Header],
    first: bytes,
    rest: AsyncIterator[bytes],
    close: Callable[[], Awaitable[None]],
) -> None:
    """Stream an upstream body to the client, and always release the upstream response."""
    try:
        await send_streamed(send, status, headers, first, rest)
    except UpstreamError as exc:
        # the headers are out: returning without the final body message makes the server cut
        # the connection, so the client sees a truncated answer, never a complete wrong one
        log.warning("upstream failed mid-response", extra={"error": type(exc).__name__})
    finally:
        await close()


def client_host(scope: Scope) -> str | None:
    """The socket peer's address (never a client-sent header: see SPEC section 2)."""
    client = scope.get("client")
    return client[0] if client else None
