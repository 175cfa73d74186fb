"""Koa's wire behaviour as the fake Lunary (tests/fake_lunary.py) needs it: answers, CORS
headers, the body parser with its inflation, and hanging up the way an exited process does."""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import zlib
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from tests import fake_lunary_checks as checks

JSON_TYPE = "application/json; charset=utf-8"
PROTOBUF = "application/x-protobuf"
# koa-bodyparser's jsonTypes; anything else (but forms) is read as no body at all
JSON_MEDIA = {
    "application/json",
    "application/json-patch+json",
    "application/vnd.api+json",
    "application/csp-report",
    "application/scim+json",
}
JSON_LIMIT = 20 * 1024 * 1024


class Refused(Exception):
    """An answer a handler gives instead of its own (Koa's ctx.throw)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def json_answer(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type=JSON_TYPE)


def not_found() -> Response:
    return json_answer({"message": "Not Found"}, 404)


def invalid(issues: list[str]) -> Response:
    return json_answer({"error": "Error", "message": checks.message(issues)}, 422)


def cors_headers(request: Request) -> dict[str, str]:
    """@koa/cors with credentials: the Origin echoed, empty when the request has none."""
    return {
        "Vary": "Origin",
        "Access-Control-Allow-Origin": request.headers.get("origin", ""),
        "Access-Control-Allow-Credentials": "true",
    }


def preflight(cors: dict[str, str]) -> Response:
    response = Response(status_code=204)
    response.headers.update(cors)
    response.headers["Access-Control-Allow-Methods"] = "GET,POST,PATCH,DELETE,OPTIONS,PUT"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type,Authorization,Accept"
    return response


def jws_shaped(token: str) -> bool:
    """Whether jose gets as far as checking the signature (else it throws JWSInvalid)."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header = orjson.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        return False
    return isinstance(header, dict) and isinstance(header.get("alg"), str) and bool(header["alg"])


def parse_body(request: Request, body: bytes) -> Any:
    """Lunary's body step: protobuf kept raw; JSON and forms inflated (gzip, deflate) and
    parsed by koa-bodyparser; any other type is read as an empty object."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(PROTOBUF):
        return body
    media = content_type.split(";")[0].strip().lower()
    if media not in JSON_MEDIA and media != "application/x-www-form-urlencoded":
        return {}
    encoding = request.headers.get("content-encoding", "identity")
    text = inflated(encoding, body).decode(errors="replace")
    if media == "application/x-www-form-urlencoded":
        return dict(parse_qsl(text))
    if not text.strip():
        return {}
    if text.lstrip()[0] not in "{[":  # co-body's strict mode
        raise Refused(json_answer({"message": "invalid JSON, only supports object and array"}, 400))
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise Refused(json_answer({"message": f"JSON Parse error: {error}"}, 400)) from error


def inflated(encoding: str, body: bytes) -> bytes:
    """The inflation package: gzip and deflate bodies are inflated, within jsonLimit."""
    encoding = encoding.strip().lower()
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding != "identity":
            message = f"Unsupported Content-Encoding: {encoding}"
            raise Refused(json_answer({"message": message}, 415))
    except (OSError, EOFError, zlib.error) as error:
        raise Refused(json_answer({"message": "incorrect header check"}, 400)) from error
    if len(body) > JSON_LIMIT:
        raise Refused(json_answer({"message": "request entity too large"}, 413))
    return body


def protobuf_only(request: Request) -> None:
    if not request.headers.get("content-type", "").startswith(PROTOBUF):
        raise Refused(Response("Unsupported Content-Type", 415, media_type="text/plain"))


def protobuf_answer() -> Response:
    """An empty Export*ServiceResponse."""
    return Response(b"", 200, media_type=PROTOBUF)


async def hang_up(send: Send) -> None:
    """Close the connection unanswered, as the socket of a process that exited is closed.

    uvicorn's `send` is a method of the request's cycle, which holds the transport; the wait
    lets uvicorn see the disconnect, so that it does not answer 500 itself."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    assert transport is not None, "uvicorn's send no longer leads to its transport"
    transport.close()
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.001)
