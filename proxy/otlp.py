"""Reading the runs an OTLP export names, from its protobuf wire bytes, one bounded slice per step.

How Lunary maps OpenTelemetry to runs (packages/backend/src/api/otel, commit a86d698):

- `POST /v1/traces`: every span becomes a run with runId = hex(span_id) and parentRunId =
  hex(parent_span_id) when it has one; ingest then hashes these 16-character ids to UUIDs
  (runs.filed_run_id). Its decoder (ts-proto) reads a field only under its exact tag and skips
  every other, so this reader does too, and takes every span_id a span repeats (the decoder keeps
  the last: reading more only costs a refetch).
- `POST /v1/logs`: a log record becomes a run whose id is its `gen_ai.tool.call.id` attribute
  (the record's, or its resource's) when that looks like a UUID, and a fresh random UUID
  otherwise, so those attributes are the only existing runs a log export can change.
- Both answer before they write (the events are applied after the answer): see Invalidator.

Protobuf is read here by hand, not with a decoder library: a decoder builds every span and
attribute as objects at once (a 20 MiB export of tiny attributes is millions of them, and one
long pause), where this walks the wire bytes, keeps only the ids, yields every STEP_BYTES, and
gives up past MAX_RUNS runs or MAX_FIELDS fields. What it cannot read exactly (a group, an
unknown wire type, a length past its message, a field or tag ts-proto would stop at) raises
UnreadableBody: the caller fails safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum, auto

from proxy.ingest import MAX_RUNS, STEP_BYTES, Unreadable, UnreadableBody
from proxy.runs import filed_run_id

LEN, VARINT, I64, I32 = 2, 0, 1, 5  # the wire types a message may hold (3 and 4 are groups)
TOOL_CALL_ID_KEY = b"gen_ai.tool.call.id"
# fields walked per export, at about a microsecond each; more is unreadable (a cut). An exporter's
# batch of 512 spans of 100 attributes is 51,200; a 20 MiB body of 2-byte fields, 10 million
MAX_FIELDS = 250_000
# what transform.ts's ensureIsUUIDSync keeps as an id: 36 hex digits or hyphens
_UUID_LIKE = re.compile(rb"[0-9a-fA-F-]{36}")


class Field(Enum):
    """What a length-delimited field holds, for the reader."""

    SPAN_ID = auto()  # bytes: a run id, as hex
    KEY = auto()  # an attribute's key
    STRING = auto()  # an attribute's string value


# message -> {tag: what the field holds}, from the OTLP .proto files: a tag is field << 3 | LEN
Message = dict[int, "Message | Field"]
_SPAN: Message = {2 << 3 | LEN: Field.SPAN_ID, 4 << 3 | LEN: Field.SPAN_ID}  # span_id, parent
_SCOPE_SPANS: Message = {2 << 3 | LEN: _SPAN}  # spans
_RESOURCE_SPANS: Message = {2 << 3 | LEN: _SCOPE_SPANS}  # scope_spans
TRACES: Message = {1 << 3 | LEN: _RESOURCE_SPANS}  # ExportTraceServiceRequest.resource_spans
_ANY_VALUE: Message = {1 << 3 | LEN: Field.STRING}  # string_value
KEY_VALUE: Message = {1 << 3 | LEN: Field.KEY, 2 << 3 | LEN: _ANY_VALUE}  # key, value
_LOG_RECORD: Message = {6 << 3 | LEN: KEY_VALUE}  # attributes
_SCOPE_LOGS: Message = {2 << 3 | LEN: _LOG_RECORD}  # log_records
_RESOURCE: Message = {1 << 3 | LEN: KEY_VALUE}  # attributes
_RESOURCE_LOGS: Message = {1 << 3 | LEN: _RESOURCE, 2 << 3 | LEN: _SCOPE_LOGS}
LOGS: Message = {1 << 3 | LEN: _RESOURCE_LOGS}  # ExportLogsServiceRequest.resource_logs


@dataclass
class _Attribute:
    """What a KeyValue holds so far: each key it gave, and each string value."""

    keys: list[bytes] = field(default_factory=list)
    strings: list[bytes] = field(default_factory=list)


@dataclass
class _Open:
    """A message being read, put aside while one inside it is: its fields, where it ends, and
    the attribute it is part of."""

    fields: Message
    end: int
    attribute: _Attribute | None = None


class OtlpReader:
    """The runs one OTLP export names: `run_ids`, as Lunary files them, once slices() is done."""

    def __init__(self, body: bytes, root: Message) -> None:
        self._body = body
        self._root = root
        self.run_ids: set[str] = set()

    def slices(self) -> Iterator[None]:
        """Walk the export, STEP_BYTES of it per item; raises UnreadableBody (see the module)."""
        body = self._body
        # the message being read (its fields, end and attribute), and those it is inside
        fields, end, attribute = self._root, len(body), None
        outer: list[_Open] = []
        pos, pause_at, fields_left = 0, STEP_BYTES, MAX_FIELDS
        while True:
            if pos >= end:
                if fields is KEY_VALUE and attribute is not None:
                    self._attribute(attribute)
                if not outer:
                    return
                opened = outer.pop()
                fields, end, attribute = opened.fields, opened.end, opened.attribute
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
                if held is None:
                    pos = value_end
                elif isinstance(held, dict):
                    outer.append(_Open(fields, end, attribute))
                    if held is KEY_VALUE:
                        attribute = _Attribute()
                    fields, end = held, value_end
                    continue  # read its fields from here
                else:
                    self._value(held, attribute, pos, value_end)
                    pos = value_end
            elif wire_type == VARINT:
                _, pos = _varint(body, pos, end)
            else:
                pos += 8 if wire_type == I64 else 4
                if pos > end:
                    raise UnreadableBody(Unreadable.NOT_PROTOBUF)
            if pos >= pause_at:
                pause_at = pos + STEP_BYTES
                yield

    def _value(self, held: Field, attribute: _Attribute | None, pos: int, end: int) -> None:
        if held is Field.SPAN_ID:
            if end > pos:
                self._add(self._body[pos:end].hex())
        elif attribute is not None and end - pos <= 64:
            # a key or a string value: only short ones can be the tool call id or a UUID
            found = attribute.keys if held is Field.KEY else attribute.strings
            found.append(self._body[pos:end])

    def _attribute(self, attribute: _Attribute) -> None:
        """A run when the KeyValue's key is gen_ai.tool.call.id and its string value looks like
        a UUID (ts-proto keeps the last of each field; every one is taken here)."""
        if TOOL_CALL_ID_KEY in attribute.keys:
            for value in attribute.strings:
                if _UUID_LIKE.fullmatch(value):
                    self._add(value.decode())

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
