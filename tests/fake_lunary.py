"""A fake Lunary API that behaves as ../shared/UPSTREAM.md describes (its "Observed on the real
backend" section first), and counts requests.

It is served over real HTTP by the tests. A request goes through what Lunary's Koa app runs, in
its order: CORS headers, the auth middleware (`api/v1/auth/utils.ts`), the per-address rate
limit (`utils/ratelimit.ts`), the body parser, then the routes, case-insensitive and with an
optional trailing slash as koa-router matches them. Writes change the runs (tests/
fake_lunary_runs.py applies ingest events and OTLP spans as Lunary does), so a test sees a write
take effect. Knobs (latency, forced failures, extra headers) let a test shape the upstream;
`requests` records what reached it, raw path and headers included.

Credentials: `add_key` makes API keys (a project's id is also its public key, as in Lunary's
legacy), `add_jwt` a dashboard session token, which reads runs org-wide and names its project
with `?projectId=`. A DELETE of an `llm` run with an API key answers, then "crashes" the fake as
it makes Lunary's process exit: every later request is hung up on until `restart()`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tests import fake_lunary_checks as checks
from tests.fake_lunary_http import (
    JSON_TYPE,
    Refused,
    cors_headers,
    hang_up,
    invalid,
    json_answer,
    jws_shaped,
    not_found,
    parse_body,
    preflight,
    protobuf_answer,
    protobuf_only,
)
from tests.fake_lunary_runs import RunTable, fake_cost, js_truthy, new_row, pg_uuid, span_events

# zod's .uuid(): the hyphenated form only, any case
ZOD_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
# the auth middleware's publicRoutes (strings match the path exactly, patterns anywhere);
# /echo is the fake's own
PUBLIC_PATHS = {
    "/api/report", "/api/v1/template", "/v1/openapi", "/v1/health", "/v1/health-check",
    "/webhooks/stripe", "/auth/user/password/reset", "/v1/runs/ingest",
    "/v1/template_versions/latest", "/v1/template-versions/latest", "/v1/users/verify-email",
    "/v1/users/send-verification", "/v1/evaluations/run", "/v1/traces", "/v1/metrics",
    "/v1/logs", "/v1/test-endpoint", "/v1/test-endpoint/auth", "/echo",
}  # fmt: skip
PUBLIC_PATTERNS = re.compile(
    r"^/auth/.+|/v1/runs/.+/public|/v1/runs/.+/feedback|/v1/runs/exports/.+"
    r"|/v1/datasets/.+|/v1/datasets-v2/.+"
)
FORBIDDEN = {"error": "Forbidden", "message": "You don't have access to this resource"}
After = Callable[[], None] | None


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


@dataclass(frozen=True)
class Caller:
    """Who a request passed the auth middleware as: Lunary's ctx.state."""

    org_id: str | None = None
    project_id: str | None = None
    private: bool = False  # a private API key: every route and right
    session: bool = False  # a dashboard JWT: the user's rights, never rate-limited
    token: str = ""  # the credential, for reader markers


@dataclass
class FakeLunary:
    """State and behaviour of the fake upstream; call the instance as an ASGI app."""

    keys: dict[str, ApiKey] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # Lunary's run rows by id
    projects: dict[str, str] = field(default_factory=dict)  # project id -> org id
    jwts: dict[str, str] = field(default_factory=dict)  # issued session token -> org id
    requests: list[Seen] = field(default_factory=list)
    latency: float = 0.0
    fail_status: int | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    body_override: bytes | None = None  # sent instead of a 200 run body (to fake broken JSON)
    trickle_delay: float = 0.0  # send run bodies in 10 pieces, this many seconds apart
    read_latency: float = 0.0  # extra delay on GETs of runs, after the run was read
    rate_limit: int = 10_000  # requests per client address and window (Lunary: 150)
    rate_window: float = 60.0  # seconds of koa-ratelimit's fixed window
    limited_buckets: set[str] = field(default_factory=set)  # always 429, whatever the count
    in_flight: int = 0
    max_in_flight: int = 0
    retry_after: str | None = None  # forces the 429's Retry-After; else whole seconds left
    # run bodies and /related rows carry "reader": reader_marker(the credential that read them),
    # so a test can tell whose fetch a cached answer came from
    reader_markers: bool = False
    otlp_apply_delay: float = 0.05  # Lunary writes an OTLP export's runs after answering
    crashed: bool = False  # the process "exited": connections are closed unanswered
    table: RunTable = field(init=False)
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.table = RunTable(self.runs)

    # -- set-up helpers ------------------------------------------------------------------

    @staticmethod
    def project_of(org_id: str) -> str:
        """The org's default project: where `add_run` files runs and private keys belong."""
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, org_id))

    def add_key(
        self, org_id: str = "org-a", private: bool = True, *, project: str | None = None
    ) -> str:
        """A new API key. A private key belongs to the org's default project unless told; a
        public key is a project of its own (its id), unless `project` is given."""
        key = str(uuid.uuid4())
        project_id = project or (self.project_of(org_id) if private else key)
        self.projects.setdefault(project_id, org_id)
        self.keys[key] = ApiKey(project_id, org_id, private)
        return key

    def add_jwt(self, org_id: str = "org-a") -> str:
        """A dashboard session token of a user of the org, shaped as Lunary's HS256 JWTs."""

        def part(document: dict[str, str]) -> str:
            return base64.urlsafe_b64encode(orjson.dumps(document)).rstrip(b"=").decode()

        header = part({"alg": "HS256", "typ": "JWT"})
        payload = part({"userId": str(uuid.uuid4()), "orgId": org_id})
        signature = base64.urlsafe_b64encode(hashlib.sha256(payload.encode()).digest())
        token = f"{header}.{payload}.{signature.rstrip(b'=').decode()}"
        self.jwts[token] = org_id
        return token

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
        """A run in the org's default project: settled (success, 3.25 s) or just started."""
        run_id = run_id or str(uuid.uuid4())
        project_id = self.project_of(org_id)
        self.projects.setdefault(project_id, org_id)
        tokens = (10, 20) if settled else (None, None)
        self.runs[run_id] = new_row(
            run_id,
            project_id,
            type=run_type,
            name="gpt-4o",
            createdAt="2026-11-01T10:00:00.000Z",
            endedAt="2026-11-01T10:00:03.250Z" if settled else None,
            status="success" if settled else "started",
            promptTokens=tokens[0],
            completionTokens=tokens[1],
            cost=fake_cost(*tokens),
            input=[{"role": "user", "content": "Hello é ✓"}],
            output=[{"role": "assistant", "content": "x" * size}] if settled else None,
            parentRunId=parent,
            metadata={"marker": marker},
        )
        return run_id

    def shown(self, run_id: str) -> dict[str, Any]:
        """The body `GET /v1/runs/{run_id}` answers now (without a reader marker)."""
        return self.table.shown(run_id)

    def restart(self) -> None:
        """The backend process is back: it answers again, with fresh rate-limit windows."""
        self.crashed = False
        self._windows.clear()

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
        if self.crashed:
            await hang_up(send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        self.requests.append(
            Seen(scope["method"], raw_path, scope["query_string"], list(scope["headers"]), body)
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            response, after = self._answer(request, raw_path.decode("latin-1"), body)
            if self.read_latency and scope["method"] == "GET" and b"/v1/runs/" in raw_path:
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
        if after is not None:
            after()

    def _answer(self, request: Request, path: str, body: bytes) -> tuple[Response, After]:
        """Lunary's middleware chain: CORS, auth, rate limit, body parser, routes."""
        if self.fail_status is not None:
            return json_answer({"message": "Internal Server Error"}, self.fail_status), None
        cors = cors_headers(request)
        if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            return preflight(cors), None
        try:
            caller = self._authenticate(request, path)
        except Refused as refused:  # before the rate limit: no Rate-Limit headers
            refused.response.headers.update(cors)
            return refused.response, None
        after: After = None
        limits: dict[str, str] = {}
        try:
            limits = self._rate_limit(request, caller)
            request.state.body = body
            document = parse_body(request, body)
            response, after = self._route(request, path, caller, document)
        except Refused as refused:  # Koa's ctx.throw: the headers set so far stay
            response = refused.response
        response.headers.update({**limits, **cors})
        return response, after

    # -- auth and rate limit ---------------------------------------------------------------

    def _authenticate(self, request: Request, path: str) -> Caller:
        """authMiddleware: a bearer token or X-API-Key; public routes also take none."""
        public = path in PUBLIC_PATHS or PUBLIC_PATTERNS.search(path) is not None
        words = request.headers.get("authorization", "").split(" ")
        bearer = words[1] if len(words) > 1 else ""  # "<key>" alone, with no scheme, is none
        key = bearer or request.headers.get("x-api-key", "")
        if public and not key:
            return Caller()
        if ZOD_UUID.fullmatch(key):
            return self._api_key(key, public)
        if not bearer:  # Lunary's catch returns without an answer: Koa's 404
            raise Refused(not_found())
        return self._session(bearer, request)

    def _api_key(self, key: str, public_route: bool) -> Caller:
        """checkApiKey: a key of the api_key table, else a project id (a legacy public key);
        both are uuid columns, so any case matches."""
        record, canonical = self.keys.get(key.lower()), key.lower()
        if record is None and canonical in self.projects:
            record = ApiKey(canonical, self.projects[canonical], private=False)
        if record is None:
            raise Refused(json_answer({"message": "Invalid API key"}, 401))
        if not record.private and not public_route:
            raise Refused(json_answer({"message": "This route requires a private API key"}, 401))
        return Caller(record.org_id, record.project_id, private=record.private, token=key)

    def _session(self, token: str, request: Request) -> Caller:
        """A dashboard JWT: ?projectId= names the project, which must be the user's."""
        org_id = self.jwts.get(token)
        if org_id is None:
            if jws_shaped(token):  # a forged or foreign JWT fails verification: Koa's 404
                raise Refused(not_found())
            raise Refused(json_answer({"message": "Invalid access token"}, 401))
        projects = request.query_params.getlist("projectId")
        project_id = pg_uuid(projects[0]) if projects and projects[0] else None
        if len(projects) > 1 or (projects and projects[0] and project_id is None):
            raise Refused(not_found())  # the membership query fails: caught, no answer
        if project_id and self.projects.get(project_id) != org_id:
            raise Refused(json_answer({"message": "Unauthorized access to project"}, 401))
        return Caller(org_id, project_id or None, session=True, token=token)

    def _rate_limit(self, request: Request, caller: Caller) -> dict[str, str]:
        """koa-ratelimit's memory driver: a fixed window per client address, counted after
        authentication; sessions are whitelisted. Returns the headers for the answer."""
        if caller.session:
            return {}
        forwarded = request.headers.get("x-forwarded-for", "")
        client = forwarded.split(",")[0].strip() or (request.client.host if request.client else "")
        now = time.time()
        start, count = self._windows.get(client, (now, 0))
        if now > start + self.rate_window:
            start, count = now, 0
        self._windows[client] = (start, count + 1)
        reset = start + self.rate_window
        headers = {
            "Rate-Limit-Remaining": str(max(self.rate_limit - count - 1, 0)),
            "Rate-Limit-Reset": f"{reset:.6f}".rstrip("0").rstrip("."),
            "Rate-Limit-Total": str(self.rate_limit),
        }
        if count < self.rate_limit and client not in self.limited_buckets:
            return headers
        retry_after = self.retry_after or str(int(reset - now))
        raise Refused(
            Response(
                "Sometimes You Just Have to Slow Down.",
                429,
                headers={**headers, "Rate-Limit-Remaining": "0", "Retry-After": retry_after},
                media_type="text/plain",
            )
        )

    # -- routes --------------------------------------------------------------------------

    def _route(
        self, request: Request, path: str, caller: Caller, document: Any
    ) -> tuple[Response, After]:
        method = "GET" if request.method == "HEAD" else request.method
        for route_method, pattern, name in ROUTES:
            match = pattern.fullmatch(path)
            if match is not None and route_method in (method, "*"):
                handler = getattr(self, name)
                params = [unquote(value) for value in match.groups()]
                answer = handler(request, caller, document, *params)
                return answer if isinstance(answer, tuple) else (answer, None)
        return not_found(), None

    def _ingest(self, _: Request, caller: Caller, document: Any) -> Response:
        project_id = (caller.project_id or "").lower()
        if not ZOD_UUID.fullmatch(project_id):
            return json_answer({"message": "Incorrect project id format"}, 402)
        if project_id not in self.projects:
            return json_answer({"message": "This project does not exist"}, 401)
        events = document.get("events") if isinstance(document, dict) else None
        if not js_truthy(events):
            return json_answer({"message": "Missing events payload."}, 500)
        return json_answer({"results": self._ingested(project_id, events)})

    def _report(self, _: Request, __: Caller, document: Any) -> Response:
        """The legacy route: the project is the first event's projectId (or app)."""
        events = document.get("events") if isinstance(document, dict) else None
        if not isinstance(events, list) or not events:
            return json_answer({"message": "Missing events payload."}, 400)
        first = events[0] if isinstance(events[0], dict) else {}
        project_id = first.get("projectId") or first.get("app")
        if not isinstance(project_id, str) or not ZOD_UUID.fullmatch(project_id):
            return json_answer({"message": "Incorrect project id format"}, 402)
        if project_id.lower() not in self.projects:
            return json_answer({"message": "This project does not exist"}, 401)
        return json_answer(self._ingested(project_id.lower(), events))

    def _ingested(self, project_id: str, events: Any) -> list[dict[str, Any]]:
        try:
            return self.table.ingest(project_id, events, self._app_projects())
        except TypeError as error:
            raise Refused(json_answer({"message": str(error)}, 500)) from error

    def _app_projects(self) -> dict[str, str]:
        """What an event's `appId` may name (a key, or a project id) -> its project."""
        named = {key: record.project_id for key, record in self.keys.items()}
        return {**named, **{project: project for project in self.projects}}

    def _count(self, _: Request, caller: Caller, __: Any) -> Response:
        return json_answer(
            sum(1 for row in self.runs.values() if row["projectId"] == caller.project_id)
        )

    def _usage(self, _: Request, caller: Caller, __: Any) -> Response:
        _check_access(caller)
        return json_answer([])

    def _export(self, request: Request, caller: Caller, __: Any) -> Response:
        if not caller.private:
            return json_answer({"message": "This endpoint requires a valid private API key"}, 401)
        query = dict(request.query_params)
        issues = checks.obj(
            type=checks.enum("llm", "trace", "thread"),
            exportFormat=checks.enum("csv", "jsonl", "ojsonl"),
        )(query, "")
        return invalid(issues) if issues else Response(b"", 200, media_type="text/plain")

    def _get_run(self, request: Request, caller: Caller, _: Any, run: str) -> Response:
        run_id = _run_id(run)
        row = self.runs.get(run_id)
        if row is None or self.projects.get(row["projectId"]) != caller.org_id:
            return json_answer({"message": "Run not found"}, 404)
        if self.body_override is not None:
            return Response(self.body_override, 200, media_type=JSON_TYPE)
        return json_answer(self._marked(self.table.shown(run_id), caller))

    def _public(self, _: Request, __: Caller, ___: Any, run: str) -> Response:
        run_id = _run_id(run)
        if not self.runs.get(run_id, {}).get("isPublic"):
            return json_answer({"message": "Run not found. It might not be public."}, 500)
        return json_answer(self.table.shown(run_id, public=True))

    def _related(self, _: Request, caller: Caller, __: Any, run: str) -> Response:
        _check_access(caller)
        rows = self.table.related(_run_id(run), caller.project_id)
        return json_answer([self._marked(row, caller) for row in rows])

    def _get_feedback(self, _: Request, __: Caller, ___: Any, run: str) -> Response:
        row = self.runs.get(_run_id(run))
        if row is None:
            return json_answer({"message": "Run not found"}, 404)
        if row["feedback"] is None:
            return Response(status_code=204)  # Koa's answer to a null body: no Content-Type
        return json_answer(row["feedback"])

    def _visibility(self, _: Request, caller: Caller, document: Any, run: str) -> Response:
        _check_access(caller)
        _validate(checks.VISIBILITY, document)
        self._in_project(run, caller).update(isPublic=document["visibility"])
        return json_answer({})

    def _tags(self, _: Request, caller: Caller, document: Any, run: str) -> Response:
        _check_access(caller)
        _validate(checks.TAGS, document)
        self._in_project(run, caller).update(tags=document["tags"])
        return json_answer({})

    def _feedback(self, _: Request, caller: Caller, document: Any, run: str) -> Response:
        _check_access(caller)
        _validate(checks.FEEDBACK, document)
        row = self.runs.get(_run_id(run))
        if row is None:
            message = "Cannot destructure property 'feedback' from null or undefined value"
            return json_answer({"message": message}, 500)
        sent = {k: v for k, v in (document or {}).items() if k in ("thumb", "comment")}
        self._in_project(run, caller).update(feedback={**(row["feedback"] or {}), **sent})
        return json_answer({})

    def _score(self, _: Request, caller: Caller, document: Any, run: str) -> Response:
        """Scores are upserted by label, whatever the project (Lunary checks none here)."""
        _check_access(caller)
        _validate(checks.SCORE, document)
        row = self.runs.get(_run_id(run))
        if row is None:
            message = (
                'insert or update on table "run_score" violates foreign key constraint '
                '"run_score_run_id_fkey"'
            )
            return json_answer({"message": message}, 500)
        score = {k: document.get(k) for k in ("label", "value", "comment")}
        row["scores"] = [s for s in row["scores"] if s["label"] != score["label"]] + [score]
        return json_answer({})

    def _delete(self, _: Request, caller: Caller, __: Any, run: str) -> tuple[Response, After]:
        """Deletes the run and its descendants. With an API key, Lunary's audit-log insert of
        a deleted `llm` run fails unawaited and the process exits after answering."""
        _check_access(caller)
        if not ZOD_UUID.fullmatch(run):
            raise Refused(invalid(['Invalid uuid at "id"']))
        row = self.runs.get(run.lower())
        if row is None or row["projectId"] != caller.project_id:
            return not_found(), None
        for member in self.table.family(row["id"]):
            del self.runs[member]
        crashes = row["type"] == "llm" and not caller.session
        return json_answer({}), (self._crash if crashes else None)

    def _traces(self, request: Request, caller: Caller, document: Any) -> tuple[Response, After]:
        """Answers at once; the spans' runs are written `otlp_apply_delay` later. Without a
        project (no credential) Lunary's unawaited write throws and the process exits."""
        protobuf_only(request)
        try:
            events = span_events(document)
        except Exception as error:  # protobuf's DecodeError (untyped module), or a TypeError
            raise Refused(json_answer({"message": str(error)}, 500)) from error
        if not events:
            return protobuf_answer(), None
        project_id = caller.project_id

        def later() -> None:
            if project_id is None:
                self._crash()
            else:
                self.table.ingest(project_id, events, self._app_projects())

        def after() -> None:
            asyncio.get_running_loop().call_later(self.otlp_apply_delay, later)

        return protobuf_answer(), after

    def _logs(self, request: Request, _: Caller, document: Any) -> Response:
        """Read and answered; log records change no run in the fake."""
        protobuf_only(request)
        try:
            ExportLogsServiceRequest.FromString(document)
        except Exception as error:  # protobuf's DecodeError: its module has no type stubs
            return json_answer({"message": str(error)}, 500)
        return protobuf_answer()

    def _template(self, request: Request, _: Caller, __: Any) -> Response:
        return json_answer({"slug": request.query_params.get("slug"), "content": []})

    def _echo(self, request: Request, _: Caller, __: Any) -> Response:
        return Response(request.state.body, 201, media_type="application/octet-stream")

    # -- helpers -------------------------------------------------------------------------

    def _crash(self) -> None:
        self.crashed = True

    def _in_project(self, run: str, caller: Caller) -> dict[str, Any]:
        """The row an `update run ... where project_id = $project` changes: {} if none."""
        row = self.runs.get(_run_id(run))
        return row if row is not None and row["projectId"] == caller.project_id else {}

    def _marked(self, body: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {**body, "reader": reader_marker(caller.token)} if self.reader_markers else body

    def _trickled(self, response: Response) -> Response:
        body, delay = bytes(response.body), self.trickle_delay

        async def pieces() -> AsyncIterator[bytes]:
            step = max(1, len(body) // 10)
            for start in range(0, len(body), step):
                await asyncio.sleep(delay)
                yield body[start : start + step]

        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        return StreamingResponse(pieces(), response.status_code, headers=headers)


def _route(method: str, path: str, name: str) -> tuple[str, re.Pattern[str], str]:
    """A koa-router route: case-insensitive, an optional trailing slash, `:id` one segment."""
    return method, re.compile(path.replace(":id", "([^/]+)") + "/?", re.IGNORECASE), name


ROUTES = [  # in Lunary's order: /count before /:id
    _route("POST", "/api/report", "_report"),
    _route("POST", "/v1/runs/ingest", "_ingest"),
    _route("GET", "/v1/runs/count", "_count"),
    _route("GET", "/v1/runs/usage", "_usage"),
    _route("GET", "/v1/runs/export", "_export"),
    _route("GET", "/v1/runs/:id/public", "_public"),
    _route("GET", "/v1/runs/:id", "_get_run"),
    _route("PATCH", "/v1/runs/:id/visibility", "_visibility"),
    _route("PATCH", "/v1/runs/:id/tags", "_tags"),
    _route("PATCH", "/v1/runs/:id/feedback", "_feedback"),
    _route("PATCH", "/v1/runs/:id/score", "_score"),
    _route("GET", "/v1/runs/:id/related", "_related"),
    _route("GET", "/v1/runs/:id/feedback", "_get_feedback"),
    _route("DELETE", "/v1/runs/:id", "_delete"),
    _route("POST", "/v1/traces", "_traces"),
    _route("POST", "/v1/logs", "_logs"),
    _route("GET", "/v1/template_versions/latest", "_template"),
    _route("*", "/echo", "_echo"),
]


def _validate(check: checks.Check, document: Any) -> None:
    issues = check(document, "")
    if issues:
        raise Refused(invalid(issues))


def _check_access(caller: Caller) -> None:
    """checkAccess: private keys and dashboard users (all roles here) may; others not."""
    if not caller.private and not caller.session:
        raise Refused(json_answer(FORBIDDEN, 403))


def _run_id(segment: str) -> str:
    """The id a run query is made with; Postgres refuses what is not a uuid spelling."""
    run_id = pg_uuid(segment)
    if run_id is None:
        message = f'invalid input syntax for type uuid: "{segment}"'
        raise Refused(json_answer({"message": message}, 500))
    return run_id
