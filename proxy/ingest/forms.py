"""Which requests ingest runs into Lunary, and how the proxy reads the body of each.

Every route read as Lunary's router reads a path (any case, a trailing slash), after a 2xx:

- `POST /v1/runs/ingest` and the legacy `/api/report`: Lunary events as JSON, inflated first
  when sent with `Content-Encoding: gzip` or `deflate` (proxy/ingest/reader.py,
  proxy/ingest/inflate.py);
- `POST /v1/traces`: an OTLP trace export as protobuf (proxy/ingest/otlp.py), read raw: Lunary
  answers 415 to any other media type and decodes the bytes as they came, encoded or not. It applies
  the spans after it has answered, so the form is marked `applied_after_answer`. (Its
  `/v1/logs` and `/v1/metrics` make no runs at commit a86d698: they are plain passthrough.)

Whatever else such a request is (a media type or encoding Lunary would not have read, yet it
answered 2xx) is Unreadable: the caller fails safe.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.core.headers import Header
from proxy.ingest.inflate import InflateError, InflatesTooFar, inflated, known_encoding
from proxy.ingest.otlp import OtlpReader
from proxy.ingest.reader import IngestReader, Unreadable, UnreadableBody

EVENT_PATHS = frozenset({b"/v1/runs/ingest", b"/api/report"})
TRACES_PATH = b"/v1/traces"
PROTOBUF = b"application/x-protobuf"  # what Lunary's OTLP routes require the type to start with


class RunReader(Protocol):
    """Reads the runs a body names, a bounded slice per item; `run_ids` once done."""

    run_ids: set[str]

    def slices(self) -> Iterator[None]: ...


@dataclass(frozen=True)
class IngestForm:
    """How one ingest request's body is read: as events (perhaps encoded), or as OTLP spans."""

    traces: bool = False  # an OTLP trace export, not events
    encoding: bytes | None = None  # gzip or deflate, for events

    @property
    def applied_after_answer(self) -> bool:
        """Whether Lunary writes the runs only after it has answered: OTLP spans."""
        return self.traces

    def reader(self, body: bytes) -> RunReader:
        if self.traces:
            return OtlpReader(body)
        if self.encoding is None:
            return IngestReader(body)
        return IngestReader(_inflating(body, self.encoding))


def is_ingest(raw_path: bytes) -> bool:
    """Whether a path is an ingest route, in any case and with a trailing slash."""
    route = _route(raw_path)
    return route in EVENT_PATHS or route == TRACES_PATH


def ingest_form(raw_path: bytes, headers: Sequence[Header]) -> IngestForm | Unreadable:
    """How an ingest request's body is read, or why it cannot be, from its path and headers."""
    content_type = _header(headers, b"content-type")
    if _route(raw_path) == TRACES_PATH:
        if content_type is None or not content_type.startswith(PROTOBUF):
            return Unreadable.NOT_PROTOBUF  # Lunary answers 415: a 2xx is not Lunary's
        return IngestForm(traces=True)
    if content_type is not None and not _is_json(content_type):
        return Unreadable.NOT_JSON  # a form, text: Lunary may read events from those too
    encodings = [value for key, value in headers if key == b"content-encoding"]
    if len(encodings) > 1:
        return Unreadable.ENCODED  # Node joins them: "gzip, gzip", which Lunary refuses
    encoding = encodings[0].strip().lower() if encodings else b""
    if encoding in (b"", b"identity"):
        return IngestForm()
    if not known_encoding(encoding):
        return Unreadable.ENCODED
    return IngestForm(encoding=encoding)


def _inflating(body: bytes, encoding: bytes) -> Iterator[bytes]:
    try:
        yield from inflated(body, encoding)
    except InflatesTooFar:
        raise UnreadableBody(Unreadable.TOO_LARGE) from None
    except InflateError:
        raise UnreadableBody(Unreadable.ENCODED) from None


def _route(raw_path: bytes) -> bytes:
    return raw_path.lower().rstrip(b"/")


def _header(headers: Sequence[Header], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )
