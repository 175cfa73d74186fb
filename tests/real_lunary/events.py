"""What the tier sends Lunary: runs with fresh ids, ingest events, OTLP exports."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

Event = dict[str, Any]


def lunary_uuid(run_id: str) -> str:
    """The UUID Lunary files an ingested id under (UPSTREAM.md, "Ingest events and ids"),
    written out here rather than imported from the proxy, so the backend checks it."""
    if len(run_id) == 36:
        return run_id.lower()
    h = hashlib.sha256(run_id.encode()).hexdigest()
    return f"{h[0:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


@dataclass(frozen=True)
class Run:
    """A run made for one test: `sent_id` as events name it, `id` as Lunary files it."""

    sent_id: str

    @classmethod
    def fresh(cls) -> Run:
        return cls(str(uuid.uuid4()))

    @property
    def id(self) -> str:
        return lunary_uuid(self.sent_id)

    @property
    def path(self) -> str:
        return f"/v1/runs/{self.id}"

    @property
    def paths(self) -> tuple[str, str]:
        """Both cached routes of the run."""
        return self.path, f"{self.path}/related"


def token() -> str:
    """A value no earlier run of the tier wrote, so a re-run cannot pass on old data (letters
    first: Lunary parses OTLP string attributes as JSON when they are)."""
    return f"w-{uuid.uuid4().hex[:16]}"


def timestamp(offset_ms: int = 0) -> str:
    at = datetime.now(UTC) + timedelta(milliseconds=offset_ms)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(kind: str, run_id: str, id_key: str = "runId", **fields: Any) -> Event:
    """An llm run's event as the SDKs send it (Lunary applies `update` to llm runs only)."""
    return {"type": "llm", "event": kind, id_key: run_id, "timestamp": timestamp(), **fields}


def settled(run: Run) -> list[Event]:
    """A start and an end: a settled run, which the proxy keeps fresh for its full TTL."""
    start = event("start", run.sent_id, name="real-tier", input="question", timestamp=timestamp())
    end = event("end", run.sent_id, output="before", timestamp=timestamp(1))
    return [start, end]


def otlp_export(span_id: bytes, output: str) -> bytes:
    """One finished tool span: Lunary makes it a start and an end of run hex(span_id), the
    end writing `output` (spanToEvents in packages/backend/src/api/otel/pydantic-transform.ts)."""
    start = time.time_ns()
    span = Span(
        trace_id=os.urandom(16),
        span_id=span_id,
        name="real-tier-tool",
        start_time_unix_nano=start,
        end_time_unix_nano=start + 1_000_000,
        attributes=[
            KeyValue(key="gen_ai.tool.name", value=AnyValue(string_value="lookup")),
            KeyValue(key="tool_output", value=AnyValue(string_value=output)),
        ],
    )
    export = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    )
    return bytes(export.SerializeToString())
