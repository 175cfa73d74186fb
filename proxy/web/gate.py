"""The raw-path gate before any routing (SPEC section 11), and the path the router then reads.

A proxy forwards the request-target exactly as sent, so it checks and routes that, not the
percent-decoded `path` uvicorn derives: `/v1/runs/%7B<id>%7D` is routed as written (the run id
convertor reads escapes as Lunary would), and `/%68ealthz` is Lunary's, not the proxy's
`/healthz`. The proxy's own paths, spelled exactly, go straight to the router; any other spelling
of its own surface (`/ADMIN`, `//admin/..;/x`, `/OpenAPI.json`...) goes to the admin endpoint,
which answers only the exact purge path: never forwarded, so an admin token never reaches
Lunary. Everything else must pass the request-target and header checks first, and finds the
proxy started.
"""

from __future__ import annotations

from proxy.cache import errors
from proxy.core.headers import hop_by_hop_credential, not_utf8
from proxy.core.paths import check_path, is_own_surface
from proxy.web.admin import query_carries, token_carrier
from proxy.web.asgi import ASGIApp, Receive, Scope, Send, send_error
from proxy.web.components import Live

OWN_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics", b"/openapi.json"})
ADMIN_PREFIX = b"/admin/"
# the router's path for a disguised spelling of the own surface: the admin mount
ADMIN_ROUTE = "/admin/"


class RequestGate:
    """Pure ASGI: refuses what must not be forwarded, then hands the request to the router with
    `path` set to the raw path it will route on."""

    def __init__(self, app: ASGIApp, admin_token: str, live: Live) -> None:
        self.app = app
        self._admin_token = admin_token.encode()
        self._live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        scope["raw_path"] = raw_path
        if scope.get("root_path"):
            # a transparent proxy routes and forwards the target as sent: with a root path
            # (uvicorn --root-path), Starlette would route on part of it
            scope["root_path"] = ""
            scope["path"] = raw_path.decode("latin-1")
        if raw_path in OWN_PATHS:
            await self.app(scope, receive, send)
            return
        if is_own_surface(raw_path):
            if not raw_path.startswith(ADMIN_PREFIX):
                scope["path"] = ADMIN_ROUTE
            await self.app(scope, receive, send)
            return
        failure = self._refusal(scope, raw_path)
        if failure is None and self._live.parts is None:
            # before routing: not a 404 or 405 the proxy cannot know yet to be true
            failure = errors.not_started()
        if failure is not None:
            await send_error(send, failure)
            return
        if b"%" in raw_path:  # else uvicorn's path is the raw path already
            scope["path"] = raw_path.decode("ascii")  # check_path let only ASCII through
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, raw_path: bytes) -> errors.ProxyErrorReply | None:
        rejected = check_path(raw_path)
        if rejected is not None:
            return errors.bad_path(rejected.message)
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        unsendable = not_utf8(headers)
        if unsendable is not None:
            return errors.bad_header(unsendable)
        # the scope is derived from the credentials Lunary gets: none may be dropped on the way
        hop_credential = hop_by_hop_credential(headers)
        if hop_credential is not None:
            return errors.hop_by_hop_credential(hop_credential)
        if self._admin_token:  # whatever the path, the admin token never goes upstream
            carrier = token_carrier(headers, self._admin_token)
            if carrier is not None:
                return errors.admin_token_carried(carrier)
            if query_carries(scope.get("query_string", b""), self._admin_token):
                return errors.admin_token_in_query()
        return None
