"""Lunary's run table as the fake upstream keeps it: ingest events applied as Lunary's
`api/v1/runs/ingest.ts` and `utils/ingest.ts` apply them, runs shown as its `formatRun`
(`GET /v1/runs/:id`) and `getRelatedRuns` (`/related`) show them, and OTLP spans turned into
events as `api/otel/pydantic-transform.ts` turns them (commit a86d698).

Rows are camelCase copies of Lunary's `run` columns, so a test may edit `runs[id]` in place.
Left out: token counting and model prices (a flat gpt-4o price stands in), ingestion rules,
`chat` and `custom-event` events (acknowledged, not applied), and the 5 s waits Lunary makes for
a missing parent or a missing run before an `llm` end.
"""

from __future__ import annotations

import copy
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

Json = Any
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Postgres' uuid_in: optional matching braces, 32 hex digits, a hyphen allowed after any four
_PG_UUID = re.compile(r"(?P<open>\{)?(?P<hex>[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7})(?(open)\})")
_TO_CAMEL = re.compile(r"[-_][a-z]", re.IGNORECASE)  # recursiveToCamel's /([-_][a-z])/gi
RELATED_COLUMNS = (  # getRelatedRuns' select list, in its order
    "createdAt", "tags", "projectId", "id", "status", "name", "endedAt", "error", "input",
    "output", "params", "type", "parentRunId", "completionTokens", "promptTokens", "cost",
    "feedback", "metadata",
)  # fmt: skip
DUPLICATE = "Run with this ID already exists in the database."
OP_TYPES = {
    "chat": "llm",
    "text_completion": "llm",
    "generate_content": "llm",
    "embeddings": "embed",
    "execute_tool": "tool",
    "create_agent": "agent",
    "invoke_agent": "agent",
}


class IngestError(Exception):
    """One event Lunary could not apply: `{"success": false, "error": message}` in its result."""


def pg_uuid(text: str) -> str | None:
    """The canonical form Postgres stores a uuid spelling under, else None."""
    match = _PG_UUID.fullmatch(text)
    if match is None:
        return None
    digits = match["hex"].replace("-", "").lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def seeded_uuid(seed: str) -> str:
    """Lunary's uuidFromSeed: ids that are not 36 characters long are filed under this."""
    h = hashlib.sha256(seed.encode()).hexdigest()
    return f"{h[0:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def ensure_is_uuid(value: Json) -> str | None:
    """ensureIsUUID: None for a non-string (Lunary's undefined), else the id Postgres is
    asked for (36 characters are kept, anything else is hashed)."""
    if not isinstance(value, str):
        return None
    return value if not value or len(value) == 36 else seeded_uuid(value)


def camel(value: Json) -> Json:
    """recursiveToCamel: every key of every object, at any depth."""
    if isinstance(value, list):
        return [camel(item) for item in value]
    if isinstance(value, dict):
        return {_TO_CAMEL.sub(lambda m: m[0][1].upper(), k): camel(v) for k, v in value.items()}
    return value


def js_truthy(value: Json) -> bool:
    """JavaScript's truthiness: empty arrays and objects are true, 0 and "" false."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float):
        return bool(value == value and value != 0)  # NaN is false too
    return bool(value != "")


def iso_timestamp(value: Json) -> str | None:
    """`new Date(value).toISOString()`, None where JavaScript throws (an invalid date)."""
    try:
        if value is None or isinstance(value, bool | int | float):
            moment = EPOCH + timedelta(milliseconds=int(value or 0))
        elif isinstance(value, str):
            moment = datetime.fromisoformat(value)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        else:
            return None
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return iso_timestamp(datetime.now(UTC).isoformat()) or ""


def interval(start: str | None, end: str | None) -> str | None:
    """The `duration` column (ended_at - created_at) as Postgres prints an interval."""
    if not start or not end:
        return None
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    sign, delta = ("-", -delta) if delta < timedelta(0) else ("", delta)
    hours, rest = divmod(delta.seconds, 3600)
    clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    if delta.microseconds:
        clock += f".{delta.microseconds:06d}".rstrip("0")
    days = f"{delta.days} day{'s' if delta.days > 1 else ''} " if delta.days else ""
    return sign + days + clock


def clean_metadata(metadata: Json) -> Json:
    """cleanMetadata: only first-level strings, numbers, booleans and arrays of those."""
    if not metadata:
        return None
    if not isinstance(metadata, dict):
        return {}

    def primitive(value: Json) -> bool:
        return isinstance(value, str | int | float)

    return {
        key: value
        for key, value in metadata.items()
        if key == "enrichment"
        or primitive(value)
        or (isinstance(value, list) and all(primitive(item) for item in value))
    }


def clean_event(event: Json) -> dict[str, Json]:
    """cleanEvent: camelCased, ids mapped, tags listed, timestamp in ISO (token counting aside)."""
    cleaned = camel(event)
    if not isinstance(cleaned, dict):  # a string or number destructures to nothing useful
        return {}
    name, tags = cleaned.get("name"), cleaned.get("tags")
    return {
        **cleaned,
        "metadata": clean_metadata(cleaned.get("metadata")),
        "name": name.replace("models/", "", 1) if isinstance(name, str) else None,
        "tags": [tags] if isinstance(tags, str) else tags,
        "runId": ensure_is_uuid(cleaned.get("runId")),
        "parentRunId": ensure_is_uuid(cleaned.get("parentRunId")),
        "timestamp": iso_timestamp(cleaned["timestamp"]) if "timestamp" in cleaned else None,
    }


def fake_cost(prompt: Json, completion: Json) -> float | None:
    """A stand-in for calcRunCost: gpt-4o's price per token, whatever the model."""
    if not isinstance(prompt, int | float) and not isinstance(completion, int | float):
        return None
    return round((prompt or 0) * 2.5e-6 + (completion or 0) * 1e-5, 12)


def new_row(run_id: str, project_id: str, **columns: Json) -> dict[str, Json]:
    """A `run` row with the column defaults Lunary's schema gives an insert."""
    return {
        "id": run_id,
        "projectId": project_id,
        "isPublic": False,
        "feedback": None,
        "type": None,
        "name": None,
        "createdAt": now_iso(),
        "endedAt": None,
        "templateVersionId": None,
        "cost": None,
        "promptTokens": None,
        "cachedPromptTokens": 0,
        "completionTokens": None,
        "tags": None,
        "input": None,
        "output": None,
        "error": None,
        "status": None,
        "params": None,
        "metadata": None,
        "parentRunId": None,
        "externalUserId": None,
        "scores": [],
        **columns,
    }


def _with_enrichments(value: Json) -> Json:
    """formatRun gives every object of an input, output or error an empty `enrichments`."""
    value = copy.deepcopy(value)
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            item["enrichments"] = []
    return value


def _unwrapped(value: Json, key: str) -> Json:
    """processInput / processOutput: `{"input": x}` alone is shown as x."""
    if isinstance(value, dict) and list(value) == [key]:
        return value[key]
    return value


def _params(params: Json) -> Json:
    """processParams: a missing params is {}, tools sent as a string are parsed."""
    if not params:
        return {}
    if isinstance(params, dict) and isinstance(params.get("tools"), str):
        try:
            return {**params, "tools": orjson.loads(params["tools"])}
        except orjson.JSONDecodeError:
            return params
    return params


@dataclass
class ExternalUser:
    id: int
    external_id: str
    project_id: str
    created_at: str
    last_seen: str | None
    props: Json = None

    def shown(self) -> dict[str, Json]:
        return {
            "id": self.id,
            "externalId": self.external_id,
            "createdAt": self.created_at,
            "lastSeen": self.last_seen,
            "props": self.props,
        }


@dataclass
class RunTable:
    """The `run`, `external_user` and `run_score` tables, and what Lunary's queries read of them."""

    runs: dict[str, dict[str, Json]] = field(default_factory=dict)
    users: dict[tuple[str, str], ExternalUser] = field(default_factory=dict)

    # -- reads -----------------------------------------------------------------------------

    def shown(self, run_id: str, *, public: bool = False) -> dict[str, Json]:
        """The body of `GET /v1/runs/:id` (formatRun); `public` for `/:id/public`, whose query
        reads no trace id and no scores."""
        row = self.runs[run_id]
        user = self._user(row.get("externalUserId"))
        input_, output = _unwrapped(row["input"], "input"), _unwrapped(row["output"], "output")
        body: dict[str, Json] = {
            "id": row["id"],
            "projectId": row["projectId"],
            "isPublic": row["isPublic"],
            "feedback": row["feedback"],
            "type": row["type"],
            "name": row["name"],
            "createdAt": row["createdAt"],
            "endedAt": row["endedAt"],
            "duration": interval(row["createdAt"], row["endedAt"]),
            "templateVersionId": row["templateVersionId"],
            "cost": row["cost"],
            "tokens": {
                "prompt": row["promptTokens"],
                "cachedPrompt": row["cachedPromptTokens"],
                "completion": row["completionTokens"],
                "total": (row["completionTokens"] or 0) + (row["promptTokens"] or 0),
            },
            "toxicity": {"input": {}, "output": {}},
            "tags": row["tags"],
            "input": _with_enrichments(input_),
            "output": _with_enrichments(output),
            "error": _with_enrichments(row["error"]),
            "status": row["status"],
            "params": _params(row["params"]),
            "metadata": row["metadata"],
            "user": user.shown() if user else None,
        }
        if not public:
            body["traceId"] = self.trace_id(run_id)
            body["scores"] = row["scores"]
        return body

    def trace_id(self, run_id: str) -> str | None:
        """root_parent_run_id: the topmost ancestor of a run that has a parent, else null."""
        row, seen = self.runs[run_id], {run_id}
        if row["parentRunId"] is None:
            return None
        while row["parentRunId"] is not None:
            parent = self.runs.get(row["parentRunId"])
            if parent is None or parent["id"] in seen:
                return None
            row = parent
            seen.add(row["id"])
        return str(row["id"])

    def family(self, run_id: str) -> list[str]:
        """A run and all its descendants, the run first."""
        family, index = [run_id], 0
        while index < len(family):
            parent, index = family[index], index + 1
            family += [r for r, row in self.runs.items() if row["parentRunId"] == parent]
        return family

    def related(self, run_id: str, project_id: str | None) -> list[dict[str, Json]]:
        """`/related` rows: raw columns of the run (if in the project) and its descendants."""
        root = self.runs.get(run_id)
        if root is None or root["projectId"] != project_id:
            return []
        rows = sorted((self.runs[r] for r in self.family(run_id)), key=lambda r: r["createdAt"])
        shown = [{c: copy.deepcopy(row[c]) for c in RELATED_COLUMNS} for row in rows]
        for row in shown:
            row["cost"] = 0 if row["cost"] is None else row["cost"]
        return shown

    def _user(self, user_id: Json) -> ExternalUser | None:
        if not user_id:
            return None
        return next((u for u in self.users.values() if u.id == user_id), None)

    # -- ingest ----------------------------------------------------------------------------

    def ingest(
        self, project_id: str, events: Json, projects: dict[str, str]
    ) -> list[dict[str, Json]]:
        """processEventsIngestion: each event applied in timestamp order, one result each.

        `projects` maps the keys and project ids an event's `appId` may name to a project."""
        listed = events if isinstance(events, list) else [events]
        stamps = [_stamp(event) for event in listed]
        if all(stamps):  # JavaScript's sort on NaN keeps no useful order: only sort real dates
            listed = [
                e for _, e in sorted(zip(stamps, listed, strict=True), key=lambda p: str(p[0]))
            ]
        results = []
        for event in listed:
            sent = event[0] if isinstance(event, list) and len(event) == 1 else event
            if sent is None:  # Lunary's catch block reads event.runId and throws: a 500
                raise TypeError("null is not an object (evaluating 'event.runId')")
            result: dict[str, Json] = {}
            if isinstance(sent, dict) and "runId" in sent:
                result["id"] = sent["runId"]  # as sent, before any mapping
            try:
                self.apply(project_id, clean_event(sent), projects)
            except IngestError as error:
                results.append({**result, "success": False, "error": str(error)})
            else:
                results.append({**result, "success": True})
        return results

    def apply(self, project_id: str, event: dict[str, Json], projects: dict[str, str]) -> None:
        """registerEvent for one cleaned event."""
        if event.get("type") == "log":
            if event.get("parentRunId") is None or event.get("event") is None:
                raise IngestError("parentRunId and eventName must be defined")
            return  # a log line: no run changes
        app = event.get("appId")
        project_id = projects.get(app, project_id) if isinstance(app, str) else project_id
        run_id, kind = event.get("runId"), str(event.get("event"))
        if run_id is not None:
            run_id = self._postgres_id(run_id)
        user = self._seen_user(project_id, event) if kind not in ("end", "error") else None
        handler = {
            "start": self._start,
            "end": self._end,
            "error": self._error,
            "feedback": self._feedback,
            "update": self._update,
        }.get(kind)
        if handler is not None:
            handler(project_id, run_id, event, user)

    @staticmethod
    def _postgres_id(run_id: str) -> str:
        canonical = pg_uuid(run_id)
        if canonical is None:
            raise IngestError(f'invalid input syntax for type uuid: "{run_id}"')
        return canonical

    def _seen_user(self, project_id: str, event: dict[str, Json]) -> ExternalUser | None:
        """The external_user upsert Lunary makes for an event naming a `userId`."""
        external_id = event.get("userId")
        if not isinstance(external_id, str):
            return None
        key = (project_id, external_id)
        user = self.users.get(key)
        if user is None:
            user = ExternalUser(len(self.users) + 1, external_id, project_id, now_iso(), None)
            self.users[key] = user
        user.last_seen = event["timestamp"] or now_iso()
        user.props = event.get("userProps")
        return user

    def _start(
        self, project_id: str, run_id: str | None, event: dict[str, Json], user: Any
    ) -> None:
        if run_id is not None and run_id in self.runs:
            same = self.runs[run_id]["id"] == event["runId"]
            raise IngestError(
                DUPLICATE if same else 'duplicate key value violates unique constraint "run_pkey"'
            )
        metadata, parent_id = event["metadata"], event["parentRunId"]
        parent = self.runs.get(self._postgres_id(parent_id)) if parent_id else None
        user_id = user.id if user else None
        if parent is not None and parent["externalUserId"]:
            user_id = parent["externalUserId"]  # a user set on the parent cascades
        meta = metadata if isinstance(metadata, dict) else {}
        columns = {
            "type": event.get("type"),
            "externalUserId": user_id,
            "tags": event["tags"] if js_truthy(event["tags"]) else meta.get("tags"),
            "name": event["name"],
            "status": "started",
            "params": _first_truthy(event.get("params"), event.get("extra")),
            "metadata": metadata,
            "templateVersionId": _first_truthy(
                event.get("templateVersionId"),
                event.get("templateId"),
                meta.get("templateId"),
                meta.get("templateVersionId"),
            ),
            "parentRunId": parent["id"] if parent is not None else None,
            "input": event.get("input"),
        }
        if event["timestamp"]:
            columns["createdAt"] = event["timestamp"]
        row = new_row(run_id or str(uuid.uuid4()), project_id, **columns)
        self.runs[row["id"]] = row

    def _end(self, _: str, run_id: str | None, event: dict[str, Json], __: Any) -> None:
        row = self.runs.get(run_id or "")
        if row is None:
            return
        usage = event.get("tokensUsage")
        usage = usage if isinstance(usage, dict) else {}
        metadata = event["metadata"]
        if js_truthy(metadata):
            old = row["metadata"]
            row["metadata"] = (
                {**(old or {}), **metadata} if isinstance(old, dict | None) else metadata
            )
        if event.get("type") == "llm":
            row["cost"] = fake_cost(usage.get("prompt"), usage.get("completion"))
        if "output" in event:
            output = event["output"]
            row["output"] = orjson.dumps(output).decode() if isinstance(output, bool) else output
        row["status"] = "success"
        if event["timestamp"]:
            row["endedAt"] = event["timestamp"]
        for column, name in (("promptTokens", "prompt"), ("completionTokens", "completion")):
            if name in usage:
                row[column] = usage[name]
        cached = usage.get("promptCached")
        row["cachedPromptTokens"] = 0 if cached is None else cached
        if js_truthy(event.get("input")):
            row["input"] = event["input"]  # agent contexts send their input at the end

    def _error(self, _: str, run_id: str | None, event: dict[str, Json], __: Any) -> None:
        row = self.runs.get(run_id or "")
        if row is not None:
            row.update(endedAt=event["timestamp"], status="error", error=event.get("error"))

    def _feedback(self, _: str, run_id: str | None, event: dict[str, Json], __: Any) -> None:
        row = self.runs.get(run_id or "")
        if row is not None:
            merged = {**(row["feedback"] or {})}
            for part in (event.get("feedback"), event.get("extra")):
                merged.update(part if isinstance(part, dict) else {})
            row["feedback"] = merged

    def _update(self, _: str, run_id: str | None, event: dict[str, Json], __: Any) -> None:
        row = self.runs.get(run_id or "")
        if row is not None and event.get("type") == "llm":
            row["metadata"] = event["metadata"] or {}  # replaced, not merged, as Lunary does


def _first_truthy(*values: Json) -> Json:
    """JavaScript's `a || b || c`."""
    for value in values:
        if js_truthy(value):
            return value
    return values[-1]


def _stamp(event: Json) -> str | None:
    """The date processEventsIngestion sorts an event by, None for JavaScript's NaN."""
    if not isinstance(event, dict) or "timestamp" not in event:
        return None
    return iso_timestamp(event["timestamp"])


# -- OTLP ------------------------------------------------------------------------------------


def _any_value(value: AnyValue) -> Json:
    """anyValueToJs of pydantic-transform.ts: strings holding JSON are parsed."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        try:
            return orjson.loads(value.string_value)
        except orjson.JSONDecodeError:
            return value.string_value
    if kind in ("bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    return None


def _ns_iso(nanos: int) -> str:
    return iso_timestamp(nanos // 1_000_000) or ""


def span_events(export: bytes) -> list[dict[str, Json]]:
    """The events Lunary makes of an OTLP trace export: a start and an end per span, with
    runId hex(spanId) and parentRunId hex(parentSpanId), in timestamp order.

    Raises TypeError where Lunary's handler throws (an `llm` span without events)."""
    request = ExportTraceServiceRequest.FromString(export)
    events: list[dict[str, Json]] = []
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                events += _span_pair(span)
    return sorted(events, key=lambda e: str(e["timestamp"]))


def _span_pair(span: Any) -> list[dict[str, Json]]:
    """spanToEvents: the start and end events of one span."""
    attributes = {kv.key: _any_value(kv.value) for kv in span.attributes}
    ids: dict[str, Json] = {"runId": span.span_id.hex()}
    if span.parent_span_id:
        ids["parentRunId"] = span.parent_span_id.hex()
    run_type = OP_TYPES.get(str(attributes.get("gen_ai.operation.name")), "chain")
    if attributes.get("agent_name"):
        run_type = "agent"
    if attributes.get("gen_ai.tool.name"):
        run_type = "tool"
    events = attributes.get("events")
    if not isinstance(events, list):
        events = [{"name": e.name, "timeUnixNano": e.time_unix_nano} for e in span.events]
    start: dict[str, Json] = {**ids, "type": run_type, "event": "start"}
    end: dict[str, Json] = {**ids, "type": run_type, "event": "end"}
    if run_type == "llm":
        if not events:
            raise TypeError("undefined is not an object (evaluating 'events.at(-1).message')")
        model = attributes.get("gen_ai.request.model")
        start |= {"name": model, "input": events[:-1]}
        last = events[-1]
        end |= {"name": model, "output": last.get("message") if isinstance(last, dict) else None}
        end["tokensUsage"] = {
            "prompt": attributes.get("gen_ai.usage.input_tokens"),
            "completion": attributes.get("gen_ai.usage.output_tokens"),
        }
    elif run_type == "tool":
        tool = attributes.get("gen_ai.tool.name")
        start |= {"name": tool, "input": attributes.get("tool_arguments")}
        end |= {"name": tool, "output": events or attributes.get("tool_output")}
    elif run_type == "agent":
        name = attributes.get("agent_name") or "Agent"
        start |= {"name": name, "input": attributes.get("all_messages_events")}
        end |= {"name": name, "output": attributes.get("final_result")}
    else:
        tools = attributes.get("tools")  # JSON.stringify drops an undefined member
        start["name"] = end["name"] = attributes.get("span_name")
        start["input"] = orjson.dumps({} if tools is None else {"tools": tools}).decode()
        start["metadata"] = {"call_id": attributes.get("gen_ai.tool.call.id")}
    start["timestamp"] = _ns_iso(span.start_time_unix_nano)
    end["timestamp"] = _ns_iso(span.end_time_unix_nano)
    return [start, end]
