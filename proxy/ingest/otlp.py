"""Reading the runs an OTLP trace export names, from its protobuf wire bytes, a bounded slice per
step.

How Lunary maps OpenTelemetry to runs (packages/backend/src/api/otel, commit a86d698): every span
of `POST /v1/traces` becomes a run with runId = hex(span_id) and parentRunId =
hex(parent_span_id) when it has one, and ingest hashes these 16-character ids to UUIDs
(runs.filed_run_id). It applies them after it has answered: see Invalidator. (`POST /v1/logs`
makes no run there: its transform reads a record's `name`, which its decoder does not have.)

Lunary's decoder (ts-proto on @bufbuild/protobuf) reads a field only under its exact tag and
skips every other by its wire type; a repeated span_id counts last (this reader takes every one:
more only costs a refetch). It walks every field it decodes as a message, so this reader walks
every such field too (MESSAGES, from the generated decoders), not only those that lead to spans:
what ts-proto does with a malformed nested message (tag 0 or an end-group tag ends it early and
its parent reads on from inside it; a length past its end is read past it) could otherwise show
it a span this reader skipped. Anything of that kind (a group, an unknown wire type, a length
past its message, tag 0, nesting past MAX_DEPTH) raises UnreadableBody: the caller fails safe.

Protobuf is read here by hand, not with a decoder library: the library decodes a 20 MiB export
of tiny attributes into 464 MiB of objects in one 419 ms pause (benchmarks/otlp_reading.py),
where this walks the wire bytes, keeps only the ids, yields every STEP_BYTES, and gives up past
MAX_RUNS runs or MAX_FIELDS fields (112 ms of steps, no memory). The price: an exporter's batch
of 512 spans costs 27 ms of steps here, 1.9 ms in the library.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum, auto

from proxy.core.runs import filed_run_id
from proxy.ingest.reader import MAX_RUNS, STEP_BYTES, Unreadable, UnreadableBody

LEN, VARINT, I64, I32 = 2, 0, 1, 5  # the wire types a message may hold (3 and 4 are groups)
# fields walked per export, about half a microsecond each; more is unreadable (a cut). An
# exporter's batch of 512 spans of 30 attributes is about 65,000 (an attribute is 4: a key and
# a value in a message in a message); a 20 MiB body of 2-byte fields, 10 million
MAX_FIELDS = 250_000
MAX_DEPTH = 32  # messages inside messages: AnyValue nests itself (arrays, key-value lists)


class Field(Enum):
    """A length-delimited field the reader takes a value from."""

    SPAN_ID = auto()  # bytes: a run id, as hex


# message -> {tag: what the field holds}; a tag is field << 3 | LEN. Every field ts-proto
# decodes as a message is here (the generated decoders under src/api/otel/gen): those the
# reader takes nothing from are walked all the same.
Message = dict[int, "Message | Field"]
_STATUS: Message = {}  # message (a string), code
_ENTITY_REF: Message = {}  # schema_url, type, id_keys, description_keys: strings
_ANY_VALUE: Message = {}  # string, bool, int, double, bytes; and the two below
_ARRAY_VALUE: Message = {1 << 3 | LEN: _ANY_VALUE}  # values
_KEY_VALUE: Message = {2 << 3 | LEN: _ANY_VALUE}  # key (a string), value
_KEY_VALUE_LIST: Message = {1 << 3 | LEN: _KEY_VALUE}  # values
_ANY_VALUE.update({5 << 3 | LEN: _ARRAY_VALUE, 6 << 3 | LEN: _KEY_VALUE_LIST})
_SCOPE: Message = {3 << 3 | LEN: _KEY_VALUE}  # InstrumentationScope.attributes
_RESOURCE: Message = {1 << 3 | LEN: _KEY_VALUE, 3 << 3 | LEN: _ENTITY_REF}
_EVENT: Message = {3 << 3 | LEN: _KEY_VALUE}  # Span.Event.attributes
_LINK: Message = {5 << 3 | LEN: _KEY_VALUE}  # Span.Link.attributes (its span_id is no run)
_SPAN: Message = {
    2 << 3 | LEN: Field.SPAN_ID,  # span_id
    4 << 3 | LEN: Field.SPAN_ID,  # parent_span_id
    9 << 3 | LEN: _KEY_VALUE,  # attributes
    11 << 3 | LEN: _EVENT,
    13 << 3 | LEN: _LINK,
    15 << 3 | LEN: _STATUS,
}
_SCOPE_SPANS: Message = {1 << 3 | LEN: _SCOPE, 2 << 3 | LEN: _SPAN}
_RESOURCE_SPANS: Message = {1 << 3 | LEN: _RESOURCE, 2 << 3 | LEN: _SCOPE_SPANS}
TRACES: Message = {1 << 3 | LEN: _RESOURCE_SPANS}  # ExportTraceServiceRequest.resource_spans


class OtlpReader:
    """The runs one trace export names: `run_ids`, as Lunary files them, once slices() is done."""

    def __init__(self, body: bytes, root: Message = TRACES) -> None:
        self._body = body
        self._root = root
        self.run_ids: set[str] = set()

    def slices(self) -> Iterator[None]:
        """Walk the export, STEP_BYTES of it per item; raises UnreadableBody (see the module)."""
        body = self._body
        fields, end = self._root, len(body)  # the message being read
        outer: list[tuple[Message, int]] = []  # the messages it is inside
        pos, pause_at, fields_left = 0, STEP_BYTES, MAX_FIELDS
        while True:
            if pos >= pause_at:  # first, so that entering and leaving messages pauses too
                pause_at = pos + STEP_BYTES
                yield
            if pos >= end:
                if not outer:
                    return
                fields, end = outer.pop()
                continue
            fields_left -= 1
            if fields_left < 0:
                raise UnreadableBody(Unreadable.TOO_MANY_FIELDS)
            tag = body[pos]  # most tags and lengths are one byte: read those inline
            pos += 1
            if tag >= 0x80:
                tag, pos = _varint(body, pos - 1, end)
            wire_type = tag & 7
            if not 0 < tag >> 3 < 1 << 29 or wire_type not in (LEN, VARINT, I64, I32):
                raise UnreadableBody(Unreadable.NOT_PROTOBUF)  # ts-proto stops, or throws
            if wire_type == LEN:
                length = body[pos] if pos < end else 0x80
                pos += 1
                if length >= 0x80:
                    length, pos = _varint(body, pos - 1, end)
                value_end = pos + length
                if value_end > end:
                    raise UnreadableBody(Unreadable.NOT_PROTOBUF)
                held = fields.get(tag)
                if isinstance(held, dict):
                    if len(outer) >= MAX_DEPTH:
                        raise UnreadableBody(Unreadable.NOT_PROTOBUF)
                    outer.append((fields, end))
                    fields, end = held, value_end
                    continue  # read its fields from here
                if held is Field.SPAN_ID and value_end > pos:
                    self._add(body[pos:value_end].hex())
                pos = value_end
            elif wire_type == VARINT:
                _, pos = _varint(body, pos, end)
            else:
                pos += 8 if wire_type == I64 else 4
                if pos > end:
                    raise UnreadableBody(Unreadable.NOT_PROTOBUF)

    def _add(self, run_id: str) -> None:
        filed = filed_run_id(run_id)
        if filed not in self.run_ids:
            if len(self.run_ids) >= MAX_RUNS:
                raise UnreadableBody(Unreadable.TOO_MANY_RUNS)
            self.run_ids.add(filed)


def _varint(body: bytes, pos: int, end: int) -> tuple[int, int]:
    """A base-128 varint at `pos`, at most 10 bytes, within `end`; and the position after it."""
    value = shift = 0
    for index in range(pos, min(pos + 10, end)):
        byte = body[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    raise UnreadableBody(Unreadable.NOT_PROTOBUF)
