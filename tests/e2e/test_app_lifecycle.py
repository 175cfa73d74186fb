"""The Starlette app's edges: answers while it starts or stops, a server root path, and a
start-up that fails half-way. Driven as uvicorn drives it, by ASGI messages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from config import Settings
from proxy.core.scope import ScopeHasher
from proxy.ops.metrics import Metrics
from proxy.web import components
from proxy.web.app import create_app
from proxy.web.asgi import ASGIApp, Message

RUN = str(uuid.uuid4())


async def call(app: ASGIApp, method: str, raw_path: bytes, root_path: str = "") -> tuple[int, Any]:
    """One request as uvicorn hands it over: its root path prefixed to `path` and `raw_path`."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "method": method,
        "path": root_path + raw_path.decode(),
        "raw_path": root_path.encode() + raw_path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"proxy")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], orjson.loads(body) if body[:1] == b"{" else body


@asynccontextmanager
async def started(app: ASGIApp) -> AsyncIterator[None]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, outbox.put))  # type: ignore[arg-type]
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


@pytest.mark.parametrize(
    ("method", "raw_path"),
    [
        ("GET", b"/not-cached"),
        ("POST", f"/v1/runs/{RUN}".encode()),
        ("GET", f"/v1/runs/{RUN}".encode()),
    ],
)
async def test_before_start_up_every_served_path_is_not_ready(method: str, raw_path: bytes) -> None:
    """With passthrough off too: not a 404 or 405 the proxy could not yet know to be true."""
    app = create_app(Settings(passthrough=False))

    status, body = await call(app, method, raw_path)

    assert (status, body["error"]) == (503, "not_ready")


async def test_health_answers_before_start_up() -> None:
    status, _ = await call(create_app(Settings()), "GET", b"/healthz")
    assert status == 200


async def test_a_server_root_path_is_routed_as_part_of_the_target() -> None:
    """uvicorn --root-path prefixes it to the raw path: the proxy routes (and would forward) the
    whole target uvicorn hands it, as it did before Starlette, which would strip it first."""
    app = create_app(Settings(passthrough=False))
    async with started(app):
        health = await call(app, "GET", b"/healthz", root_path="/lunary")
        run = await call(app, "GET", f"/v1/runs/{RUN}".encode(), root_path="/lunary")
        plain_health = await call(app, "GET", b"/healthz")

    assert (health[0], health[1]["error"]) == (404, "not_found")
    assert (run[0], run[1]["error"]) == (404, "not_found")
    assert plain_health[0] == 200


def connected_clients(client: redis.Redis) -> set[str]:
    return {entry["id"] for entry in client.client_list()}


async def test_a_start_up_that_fails_half_way_closes_what_it_opened(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store and the invalidation listener were open when the read driver failed: both
    connections are closed again, and no task is left behind."""
    observer = redis.Redis.from_url(redis_url)
    before = connected_clients(observer)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the read driver could not be built")

    monkeypatch.setattr(components, "CachedReads", broken)
    settings = Settings(redis_url=redis_url)
    with pytest.raises(RuntimeError, match="could not be built"):
        await components.open_components(
            settings, Metrics(CollectorRegistry()), ScopeHasher(b"secret")
        )

    assert connected_clients(observer) - before == set()  # every connection it made is gone
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
