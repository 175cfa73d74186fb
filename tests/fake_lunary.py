"""A fake Lunary runs API that behaves as ../shared/UPSTREAM.md describes, and counts requests.

It is served over real HTTP by the tests. Knobs (latency, forced failures, extra headers) let a
test shape the upstream; `requests` records what reached it, raw path and headers included.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

JSON_TYPE = "application/json; charset=utf-8"
RESERVED = {"count", "usage", "export"}


def reader_marker(token: str) -> str:
    """What a run body read with `token` carries as `reader` when `reader_markers` is on."""
    return hashlib.sha256(b"fake-lunary-reader:" + token.encode()).hexdigest()[:16]


@dataclass
class Seen:
    """One request as it reached the fake upstream."""

    method: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


@dataclass
class ApiKey:
    project_id: str
    org_id: str
    private: bool = True


@dataclass
class FakeLunary:
    """State and behaviour of the fake upstream; call the instance as an ASGI app."""

    keys: dict[str, ApiKey] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_orgs: dict[str, str] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    latency: float = 0.0
    fail_status: int | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    body_override: bytes | None = None  # sent instead of a 200 run body (to fake broken JSON)
    trickle_delay: float = 0.0  # send run bodies in 10 pieces, this many seconds apart
    read_latency: float = 0.0  # extra delay on GETs of runs, after the run was read
    rate_limit: int = 10_000
    limited_buckets: set[str] = field(default_factory=set)  # always 429, whatever the count
    in_flight: int = 0
    max_in_flight: int = 0
    retry_after: str = "30"
    # run bodies and /related rows carry "reader": reader_marker(the credential that read them),
    # so a test can tell whose fetch a cached answer came from
    reader_markers: bool = False
    _window: Counter[str] = field(default_factory=Counter)

    # -- set-up helpers ------------------------------------------------------------------

    def add_key(self, org_id: str = "org-a", private: bool = True) -> str:
        key = str(uuid.uuid4())
        project_id = key if not private else str(uuid.uuid4())
        self.keys[key] = ApiKey(project_id, org_id, private)
        return key

    def add_run(
        self,
        org_id: str = "org-a",
        *,
        settled: bool = True,
        run_type: str = "llm",
        parent: str | None = None,
        marker: str = "",
        size: int = 0,
        run_id: str | None = None,
    ) -> str:
        run_id = run_id or str(uuid.uuid4())
        self.runs[run_id] = {
            "id": run_id,
            "projectId": str(uuid.uuid5(uuid.NAMESPACE_DNS, org_id)),
            "isPublic": False,
            "feedback": None,
            "type": run_type,
            "name": "gpt-4o",
            "createdAt": "2026-11-01T10:00:00.000Z",
            "endedAt": "2026-11-01T10:00:03.250Z" if settled else None,
            "duration": "00:00:03.25" if settled else None,
            "status": "success" if settled else "started",
            "tokens": {"prompt": 10, "cachedPrompt": 0, "completion": 20, "total": 30},
            "input": [{"role": "user", "content": "Hello é ✓", "enrichments": []}],
            "output": [{"role": "assistant", "content": "x" * size, "enrichments": []}],
            "parentRunId": parent,
            "metadata": {"marker": marker},
            "scores": [],
        }
        self.run_orgs[run_id] = org_id
        return run_id

    def count(self, path_fragment: str = "", method: str | None = None) -> int:
        return sum(
            1
            for seen in self.requests
            if path_fragment.encode() in seen.raw_path and (method is None or seen.method == method)
        )

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        self.requests.append(
            Seen(
                scope["method"],
                scope.get("raw_path") or scope["path"].encode(),
                scope["query_string"],
                list(scope["headers"]),
                body,
            )
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            response = self._answer(request, body)
            if self.read_latency and scope["method"] == "GET" and b"/v1/runs/" in scope["raw_path"]:
                # the run was read when the request arrived: a write during this pause is
                # not in the answer, as with a database read before a slow response
                await asyncio.sleep(self.read_latency)
        finally:
            self.in_flight -= 1
        if self.trickle_delay and response.status_code == 200:
            response = self._trickled(response)
        for name, value in self.extra_headers.items():
            response.headers[name] = value
        await response(scope, receive, send)

    def _answer(self, request: Request, body: bytes) -> Response:
        if self.fail_status is not None:
            return _json({"message": "Internal Server Error"}, self.fail_status)
        parts = request.url.path.strip("/").split("/")
        if [part.lower() for part in parts[:2]] != ["v1", "runs"] or len(parts) < 3:  # as Koa
            return self._other(request, body)
        key, failure = self._authenticate(request)
        if failure is not None:
            return failure
        assert key is not None
        limited = self._rate_limited(request)
        if limited is not None:
            return limited
        response = self._runs(request, parts[2:], key, body)
        response.headers["Rate-Limit-Remaining"] = "149"
        response.headers["Rate-Limit-Reset"] = f"{time.time() + 60:.3f}"
        response.headers["Rate-Limit-Total"] = "150"
        response.headers["Vary"] = "Origin"
        if "origin" in request.headers:
            response.headers["Access-Control-Allow-Origin"] = request.headers["origin"]
        return response

    @staticmethod
    def _token(request: Request) -> str | None:
        authorization = request.headers.get("authorization")
        if authorization:
            return authorization.split(" ", 1)[-1]
        return request.headers.get("x-api-key")

    def _authenticate(self, request: Request) -> tuple[ApiKey | None, Response | None]:
        token = self._token(request)
        if not token:
            return None, _json({"message": "Not Found"}, 404)
        try:
            uuid.UUID(token)
        except ValueError:
            return None, _json({"message": "Invalid access token"}, 401)
        key = self.keys.get(token)
        if key is None:
            return None, _json({"message": "Invalid API key"}, 401)
        if not key.private:
            return None, _json({"message": "This route requires a private API key"}, 401)
        return key, None

    def _rate_limited(self, request: Request) -> Response | None:
        forwarded = request.headers.get("x-forwarded-for", "")
        client = forwarded.split(",")[0].strip() or (request.client.host if request.client else "")
        self._window[client] += 1
        if self._window[client] <= self.rate_limit and client not in self.limited_buckets:
            return None
        return Response(
            "Sometimes You Just Have to Slow Down.",
            429,
            headers={"Retry-After": self.retry_after, "Rate-Limit-Remaining": "0"},
            media_type="text/plain",
        )

    def _runs(self, request: Request, rest: list[str], key: ApiKey, body: bytes) -> Response:
        segment = rest[0]
        if segment == "ingest" and request.method == "POST":
            events = orjson.loads(body).get("events", [])
            events = events if isinstance(events, list) else [events]
            results = [{"id": e.get("runId"), "success": True} for e in events]
            return _json({"results": results})
        if segment in RESERVED:
            return _json(len(self.runs))
        try:
            run_id = str(uuid.UUID(segment.strip("{}")))
        except ValueError:
            return _json({"message": f'invalid input syntax for type uuid: "{segment}"'}, 500)
        visible = self.run_orgs.get(run_id) == key.org_id
        if request.method == "PATCH" and rest[1:] == ["tags"] and visible:
            self.runs[run_id]["tags"] = orjson.loads(body)
        if request.method != "GET":
            if len(rest) == 1 and request.method == "DELETE":
                return _json({}) if visible else _json({"message": "Run not found"}, 404)
            return _json({})
        if len(rest) == 1:
            if not visible:
                return _json({"message": "Run not found"}, 404)
            if self.body_override is not None:
                return Response(self.body_override, 200, media_type=JSON_TYPE)
            return _json(self._shown(self.runs[run_id], request))
        if rest[1] == "related":
            if not visible:
                return _json([])
            family = [self.runs[run_id]] + [
                r for r in self.runs.values() if r.get("parentRunId") == run_id
            ]
            return _json([self._shown(run, request) for run in family])
        return _json({"message": "Not Found"}, 404)

    def _shown(self, run: dict[str, Any], request: Request) -> dict[str, Any]:
        if not self.reader_markers:
            return run
        return {**run, "reader": reader_marker(self._token(request) or "")}

    def _trickled(self, response: Response) -> Response:
        body, delay = bytes(response.body), self.trickle_delay

        async def pieces() -> AsyncIterator[bytes]:
            step = max(1, len(body) // 10)
            for start in range(0, len(body), step):
                await asyncio.sleep(delay)
                yield body[start : start + step]

        return StreamingResponse(pieces(), response.status_code, media_type=JSON_TYPE)

    def _other(self, request: Request, body: bytes) -> Response:
        if request.url.path == "/echo":
            return Response(body, 201, media_type="application/octet-stream")
        if request.url.path == "/v1/traces" and request.method == "POST":
            return _json({})  # OTLP export accepted whatever its encoding
        if request.url.path == "/v1/template_versions/latest":
            return _json({"slug": request.query_params.get("slug"), "content": []})
        return _json({"message": "Not Found"}, 404)


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type=JSON_TYPE)
