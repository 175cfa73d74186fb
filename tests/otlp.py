"""OTLP exports as an OpenTelemetry exporter sends them, built with the official protobuf
classes (opentelemetry-proto), for the tests of the proxy's own protobuf reader."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from proxy.core.runs import filed_run_id

PROTOBUF_HEADERS = {"Content-Type": "application/x-protobuf"}
TOOL_CALL = "gen_ai.tool.call.id"


def attribute(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(
    span_id: bytes,
    parent: bytes = b"",
    links: list[Span.Link] | None = None,
    events: list[Span.Event] | None = None,
    attributes: list[KeyValue] | None = None,
) -> Span:
    """A finished span, as a GenAI instrumentation reports a chat call."""
    return Span(
        trace_id=b"t" * 16,
        span_id=span_id,
        parent_span_id=parent,
        name="chat",
        start_time_unix_nano=1_764_000_000_000_000_000,
        end_time_unix_nano=1_764_000_001_000_000_000,
        links=links,
        events=events,
        attributes=attributes,
    )


def traces(*groups: list[Span]) -> bytes:
    """An ExportTraceServiceRequest: one resource, a scope per group of spans."""
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[attribute("service.name", "app")]),
                scope_spans=[ScopeSpans(spans=spans) for spans in groups],
            )
        ]
    )
    serialized: bytes = request.SerializeToString()
    return serialized


def logs(records: list[LogRecord], resource: list[KeyValue] | None = None) -> bytes:
    """An ExportLogsServiceRequest: one resource, one scope."""
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=resource or []),
                scope_logs=[ScopeLogs(log_records=records)],
            )
        ]
    )
    serialized: bytes = request.SerializeToString()
    return serialized


def span_run(span_id: bytes) -> str:
    """The run Lunary files a span under: hex(span_id), hashed as ingest hashes short ids."""
    return filed_run_id(span_id.hex())
