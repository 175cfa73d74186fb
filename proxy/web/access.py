"""The outermost layer: every request gets its X-Request-ID (forwarded and returned) and one
access line, whatever answers it."""

from __future__ import annotations

from proxy.ops.accesslog import Access, request_id
from proxy.web.asgi import ASGIApp, Message, Receive, Scope, Send

# where the endpoints note what the access line reports (route, cache result, upstream status)
ACCESS = "proxy.access"


class AccessLogged:
    """Pure ASGI: no Request object, one closure per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid, scope["headers"] = request_id(scope["headers"])
        access = scope[ACCESS] = Access(rid.decode("ascii"), scope["method"], scope["path"])

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                access.status = message["status"]
                message["headers"] = [*message["headers"], (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access.emit()


def access_of(scope: Scope) -> Access:
    access: Access = scope[ACCESS]
    return access
