"""The ASGI app from `create_app(settings)`: the lifespan owns every client, routes translate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from config import Settings, load_settings
from proxy.cache import errors
from proxy.cache.cooldowns import Cooldowns, RateLimited
from proxy.cache.invalidation import Invalidator
from proxy.cache.ports import Store, StoreError, Upstream, UpstreamError
from proxy.cache.reads import CachedReads, Coordination, ReadRequest
from proxy.core.cuts import Cuts
from proxy.core.headers import hop_by_hop_credential, not_utf8
from proxy.core.paths import (
    check_path,
    is_own_surface,
    match_cached_route,
    match_run_write,
    writes_unnamed_runs,
)
from proxy.core.policy import Lifetimes
from proxy.core.scope import ScopeHasher
from proxy.ingest.forms import ingest_form, is_ingest
from proxy.ingest.reader import Unreadable
from proxy.ops import logs
from proxy.ops.accesslog import Access, request_id
from proxy.ops.metrics import Metrics
from proxy.ops.tasks import TaskSet
from proxy.store.connection import connect
from proxy.store.cutting import CutListener, CuttingStore
from proxy.store.guard import GuardedStore
from proxy.store.memory import MemoryStore
from proxy.store.notify import FillNotices
from proxy.store.redis import FILLED_CHANNEL, INVALIDATED_CHANNEL, RedisStore
from proxy.upstream import LunaryUpstream
from proxy.web.admin import Admin, query_carries, token_carrier
from proxy.web.asgi import (
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    has_body,
    request_body,
    send_error,
    send_streamed,
    send_whole,
)
from proxy.web.buffering import BodyBuffer, RequestBody, RequestTooLarge, SpoolUnavailable
from proxy.web.openapi import DOCUMENT_BYTES
from proxy.web.passthrough import Passthrough

log = logging.getLogger("proxy")
READ_METHODS = frozenset({"GET", "HEAD"})
OWN_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics", b"/openapi.json"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = (b"content-type", errors.JSON_TYPE)
# the request spool budget is spent (or the disk refused): a moment later it may not be
BUFFER_FULL = errors.ProxyErrorReply(
    503,
    "request_buffer_full",
    "Too many request bodies are being buffered at once; try again shortly.",
    ((b"retry-after", b"1"),),
)
# how long start-up waits for the store's first connection (and a Cluster's slot map): a store
# that is down refuses at once; this bounds one that does not answer at all
STORE_CONNECT_BUDGET = 5.0


@dataclass(slots=True)
class Components:
    """Everything the lifespan opens and closes."""

    store: Store
    reads: CachedReads
    passthrough: Passthrough
    upstreams: tuple[Upstream, ...]
    tasks: TaskSet
    invalidator: Invalidator
    admin: Admin
    notices: FillNotices | None
    listener: asyncio.Task[None] | None


class ProxyApp:
    """A pure ASGI app: no framework on the hot path, so a hit costs one store round trip."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        secret = settings.scope_secret.get_secret_value()
        self._secret_generated = not secret
        self._hasher = ScopeHasher((secret or secrets.token_urlsafe(32)).encode())
        self._admin_token = settings.admin_token.get_secret_value().encode()
        self._parts: Components | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._logged(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request with its X-Request-ID (forwarded and returned) and access line."""
        rid, scope["headers"] = request_id(scope["headers"])
        access = Access(rid.decode("ascii"), scope["method"], scope["path"])

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                access.status = message["status"]
                message["headers"] = [*message["headers"], (b"x-request-id", rid)]
            await send(message)

        try:
            await self._http(scope, receive, send_with_id, access)
        finally:
            access.emit()

    # -- lifespan -------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        s = self.settings
        tasks = TaskSet()
        notices = self._open_notices()
        listener = None if notices is None else asyncio.create_task(notices.run())
        store = await self._open_store(notices)
        # two pools: passthrough (slow answers, large bodies) can never take the connections
        # cache fills need, nor fills the passthrough's
        fills = LunaryUpstream(s.upstream_url, s.upstream_timeout, s.fill_max_connections)
        forwards = LunaryUpstream(s.upstream_url, s.upstream_timeout, s.upstream_max_connections)
        bodies = BodyBuffer(s.max_request_bytes, s.request_buffer_bytes, s.request_spool_bytes)
        cooldowns = Cooldowns(store)
        lifetimes = Lifetimes(
            cache_ttl=s.cache_ttl,
            stale_ttl=s.stale_ttl,
            active_run_ttl=s.active_run_ttl,
            negative_ttl=s.negative_ttl,
            max_entry_bytes=s.max_entry_bytes,
        )
        coordination = Coordination(
            # a leader's fetch cannot outlive the upstream timeout; the lease adds a margin
            lock_lease=s.upstream_timeout + 1,
            coalesce_timeout=s.effective_coalesce_timeout,
        )
        # a generation (or a cut) outlives every entry written before it, and every fill that
        # read the older state
        keep_for = max(s.cache_ttl + s.stale_ttl, s.negative_ttl) + s.upstream_timeout + 1
        cuts = Cuts(s.active_run_ttl)
        cutting = CuttingStore(store, cuts)
        reads = CachedReads(
            cutting, fills, self._hasher, lifetimes, self.metrics, tasks, cooldowns, coordination
        )
        if notices is not None:  # writes through other replicas detach fills here too
            notices.on_invalidated = reads.forget_run
            self._follow_cuts(notices, CutListener(store, cutting, cuts, reads.forget_all), tasks)
        invalidator = Invalidator(
            store,
            self.metrics,
            keep_for=keep_for,
            cuts=cuts,
            # a cut matters one by one for the active-run TTL; a second more for clock skew
            cut_window=s.active_run_ttl + 1,
            on_dropped=reads.forget_runs,
            on_cut=reads.forget_all,
        )
        self._parts = Components(
            store=store,
            reads=reads,
            passthrough=Passthrough(forwards, bodies, self.metrics, cooldowns),
            upstreams=(fills, forwards),
            tasks=tasks,
            invalidator=invalidator,
            admin=Admin(s.admin_token.get_secret_value(), invalidator),
            notices=notices,
            listener=listener,
        )
        if self._secret_generated:
            log.warning(
                "PROXY_SCOPE_SECRET is not set: using a random one, so cached entries survive "
                "neither a restart nor sharing between replicas"
            )
        log.info(
            "lunary-cache-proxy ready",
            extra={"upstream": _redacted(s.upstream_url), "store": self._store_description()},
        )

    async def shutdown(self) -> None:
        parts, self._parts = self._parts, None
        if parts is not None:
            await parts.invalidator.close()
            # in-flight fills and refreshes get a moment to land, then are cancelled
            await parts.tasks.close(grace=1.0)
            if parts.listener is not None:
                parts.listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await parts.listener
            for upstream in parts.upstreams:
                await upstream.close()
            await parts.store.close()
            if parts.notices is not None:
                await parts.notices.close()

    @staticmethod
    def _follow_cuts(notices: FillNotices, listener: CutListener, tasks: TaskSet) -> None:
        """Other replicas' cuts arrive as announcements; until the listener has subscribed and
        read back the kept ones, nothing is answered from the store."""
        listener.lost()
        notices.on_cut = listener.heard
        notices.on_lost = listener.lost
        notices.on_subscribed = lambda: tasks.spawn(listener.catch_up(), "cuts")
        if notices.subscribed.is_set():  # it subscribed while the store was being opened
            notices.on_subscribed()

    def _open_notices(self) -> FillNotices | None:
        s = self.settings
        if not s.redis_url:
            return None
        # no silent reconnect: a lost subscription must be seen (store/cutting.py)
        listener = connect(s.redis_url, cluster=s.redis_cluster, timeout=None, retries=0)
        return FillNotices(listener, FILLED_CHANNEL, INVALIDATED_CHANNEL)

    async def _open_store(self, notices: FillNotices | None) -> GuardedStore:
        s = self.settings
        if not s.redis_url:
            return GuardedStore(MemoryStore(s.memory_max_entries), self.metrics)
        client = connect(s.redis_url, cluster=s.redis_cluster, timeout=s.redis_timeout)
        redis_store = RedisStore(
            client, s.redis_timeout, on_corrupt=self.metrics.corrupt_entry, notices=notices
        )
        store = GuardedStore(redis_store, self.metrics)
        try:
            await redis_store.connect(STORE_CONNECT_BUDGET)
        except StoreError as exc:  # not fatal: requests bypass it until it answers
            log.warning(
                "the store does not answer at start-up: serving from Lunary until it does",
                extra={"store": self._store_description(), "error": str(exc)},
            )
            store.failed_at_start()
        return store

    def _store_description(self) -> str:
        s = self.settings
        if not s.redis_url:
            return f"in-memory (embedded, up to {s.memory_max_entries} entries, not shared)"
        kind = "redis cluster" if s.redis_cluster else "redis"
        return f"{kind} at {_redacted(s.redis_url)}"

    # -- requests -------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send, access: Access) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        method: str = scope["method"]
        if raw_path in OWN_PATHS:
            access.route = "own"
            await self._own(raw_path, method, send)
            return
        if is_own_surface(raw_path):
            access.route = "own"
            # the proxy's own surface: never forwarded, so an admin token never reaches Lunary
            await self._admin(raw_path, method, scope["headers"], send)
            return
        rejected = check_path(raw_path)
        if rejected is not None:
            await send_error(send, errors.bad_path(rejected.message))
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        unsendable = not_utf8(headers)
        if unsendable is not None:
            await send_error(send, errors.bad_header(unsendable))
            return
        # the scope is derived from the credentials Lunary gets: none may be dropped on the way
        hop_credential = hop_by_hop_credential(headers)
        if hop_credential is not None:
            await send_error(send, errors.hop_by_hop_credential(hop_credential))
            return
        if self._admin_token:  # whatever the path, the admin token never goes upstream
            carrier = token_carrier(headers, self._admin_token)
            if carrier is not None:
                await send_error(send, errors.admin_token_carried(carrier))
                return
            if query_carries(scope.get("query_string", b""), self._admin_token):
                await send_error(send, errors.admin_token_in_query())
                return
        parts = self._parts
        if parts is None:
            await send_error(send, errors.not_ready("the proxy is starting or stopping"))
            return
        route = match_cached_route(raw_path)
        if route is not None and method in READ_METHODS:
            access.route = route.kind.value
            reply = await parts.reads.serve(
                ReadRequest(
                    route=route,
                    method=method,
                    raw_path=raw_path,
                    query_string=scope.get("query_string", b""),
                    headers=scope["headers"],
                    client_host=_client_host(scope),
                )
            )
            access.cache, access.upstream_status = reply.cache, reply.upstream_status
            if reply.rest is None:
                head = method == "HEAD"
                await send_whole(send, reply.status, reply.headers, reply.body, head=head)
            else:
                rest = reply.rest
                await _relay(send, reply.status, reply.headers, reply.body, rest, rest.aclose)
        elif not self.settings.passthrough:
            failure = (
                errors.not_found() if route is None else errors.method_not_allowed(b"GET, HEAD")
            )
            await send_error(send, failure)
        else:
            await self._pass(scope, receive, send, raw_path, method, access)

    async def _pass(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw_path: bytes,
        method: str,
        access: Access,
    ) -> None:
        assert self._parts is not None
        passthrough = self._parts.passthrough
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if passthrough.declared_too_large(headers):
            await send_error(send, errors.request_too_large(self.settings.max_request_bytes))
            return
        try:
            # whole before any upstream connection is taken: a slow or stalled upload holds
            # its own socket and buffer, never a connection other clients need
            body = await passthrough.buffered(request_body(receive)) if has_body(headers) else None
        except RequestTooLarge:
            await send_error(send, errors.request_too_large(self.settings.max_request_bytes))
            return
        except SpoolUnavailable:
            await send_error(send, BUFFER_FULL)
            return
        except ClientGone:
            return
        try:
            await self._forward(scope, send, raw_path, method, access, body)
        finally:
            if body is not None:
                body.close()

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        raw_path: bytes,
        method: str,
        access: Access,
        body: RequestBody | None,
    ) -> None:
        assert self._parts is not None
        try:
            response = await self._parts.passthrough.forward(
                method,
                raw_path,
                scope.get("query_string", b""),
                scope["headers"],
                _client_host(scope),
                body,
            )
        except RateLimited as limited:
            await send_error(send, errors.rate_limited(limited.remaining))
            return
        except UpstreamError as exc:
            await send_error(send, errors.upstream_failure(exc))
            return
        access.upstream_status = response.status
        if 200 <= response.status < 300:
            # before the client hears back, so a read right after its write sees the write
            await self._invalidate(method, raw_path, scope["headers"], body)
        await _relay(send, response.status, response.headers, b"", response.chunks, response.aclose)

    async def _invalidate(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: RequestBody | None,
    ) -> None:
        """Drop the runs a request the upstream accepted wrote: its path's, or its events'
        (or, when its events cannot be read, cut entries stored before it)."""
        assert self._parts is not None
        invalidator = self._parts.invalidator
        if method in WRITE_METHODS:
            written_run = match_run_write(raw_path)
            if written_run is not None:
                await invalidator.run(written_run, "write")
            elif writes_unnamed_runs(method, raw_path):
                writer = self._parts.reads.scope_of(headers)
                await invalidator.cut("unnamed_runs", writer)
                return
        if body is not None and method == "POST" and is_ingest(raw_path):
            writer = self._parts.reads.scope_of(headers)
            form = ingest_form(raw_path, headers)
            if isinstance(form, Unreadable):
                await invalidator.unreadable(form, writer)
                return
            async with body.reading() as events:
                await invalidator.ingest(form, events, writer)

    async def _admin(
        self, raw_path: bytes, method: str, headers: list[tuple[bytes, bytes]], send: Send
    ) -> None:
        if self._parts is None:  # starting or stopping: no admin to ask
            await send_error(send, errors.not_found())
            return
        answer = await self._parts.admin.handle(method, raw_path, headers)
        if isinstance(answer, errors.ProxyErrorReply):
            await send_error(send, answer)
            return
        await send_whole(send, 200, [JSON], answer)

    async def _own(self, raw_path: bytes, method: str, send: Send) -> None:
        if method not in READ_METHODS:
            await send_error(send, errors.method_not_allowed(b"GET, HEAD"))
            return
        if raw_path == b"/healthz":
            status, headers, body = 200, [JSON], b'{"status":"ok"}'
        elif raw_path == b"/readyz":
            status, headers, body = await self._readiness()
        elif raw_path == b"/openapi.json":
            status, headers, body = 200, [JSON], DOCUMENT_BYTES
        else:
            content_type = CONTENT_TYPE_LATEST.encode()
            status, headers, body = (
                200,
                [(b"content-type", content_type)],
                generate_latest(self.registry),
            )
        await send_whole(send, status, headers, body, head=method == "HEAD")

    async def _readiness(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if self._parts is None:
            failure = errors.not_ready("the proxy is starting or stopping")
            return failure.status, [JSON], failure.body()
        try:
            await self._parts.store.ping()
        except StoreError as exc:
            failure = errors.not_ready(f"the store does not answer ({exc})")
            return failure.status, [JSON], failure.body()
        return 200, [JSON], orjson.dumps({"status": "ready"})


def _client_host(scope: Scope) -> str | None:
    """The socket peer's address (never a client-sent header: see SPEC section 2)."""
    client = scope.get("client")
    return client[0] if client else None


async def _relay(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
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


def create_app(settings: Settings | None = None) -> ProxyApp:
    """Build the app; settings default to the environment (PROXY_* and .env)."""
    return ProxyApp(settings if settings is not None else load_settings())


def _redacted(url: str) -> str:
    """A URL fit for logs: no password in the user part, no query (it may carry one too)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user_info, host = netloc.rsplit("@", 1)
        netloc = user_info.split(":", 1)[0] + ":***@" + host
    return urlunsplit(parts._replace(netloc=netloc, query="***" if parts.query else ""))


def __getattr__(name: str) -> ProxyApp:
    """`proxy.web.app:app` for ASGI servers, built from the environment on first access."""
    if name == "app":
        settings = load_settings()
        logs.configure(settings.log_level, settings.log_format)  # uvicorn workers start bare
        application = create_app(settings)
        globals()["app"] = application
        return application
    raise AttributeError(name)
