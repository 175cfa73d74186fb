"""Every form Lunary ingests runs in is read as Lunary reads it: events inflated from gzip or
deflate, OTLP spans and log records from protobuf; in bounded memory and short steps, and what
cannot be read exactly is a cut (the caller's), never a silent miss."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import itertools
import tracemalloc
import zlib
from collections.abc import Callable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

from proxy.cache.later_drops import MAX_PENDING
from proxy.core.model import EntryKey
from proxy.core.runs import filed_run_id, ingest_run_uuid
from proxy.ingest.forms import IngestForm, ingest_form, is_ingest
from proxy.ingest.inflate import MAX_INFLATED_BYTES, PIECE_BYTES
from proxy.ingest.otlp import MAX_FIELDS
from proxy.ingest.reader import MAX_RUNS, STEP_BYTES, IngestReader, Unreadable
from proxy.ops.metrics import Metrics
from proxy.store.memory import MemoryStore
from tests.otlp import attribute, span, span_run, traces
from tests.readers import invalidator_over, read_all, settled_entry, step_costs, unreadable_because

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
JSON = [(b"content-type", b"application/json")]
PROTOBUF = [(b"content-type", b"application/x-protobuf")]


def form(path: bytes, headers: list[tuple[bytes, bytes]]) -> IngestForm:
    found = ingest_form(path, headers)
    assert isinstance(found, IngestForm), found
    return found


def encoded(events: bytes, encoding: str) -> IngestForm:
    return form(b"/v1/runs/ingest", [*JSON, (b"content-encoding", encoding.encode())])


def deflate(data: bytes) -> bytes:
    return zlib.compress(data)  # a zlib stream: what Node's createInflate reads


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "GZip": gzip.compress,
    "deflate": deflate,
    "deflate ": gzip.compress,  # Lunary's createUnzip tells gzip from zlib by their headers
    "gzip\t": deflate,
}


# -- events inflated (D3) ------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", sorted(COMPRESS))
def test_an_encoded_body_names_the_runs_its_plain_form_does(encoding: str) -> None:
    body = b'{"events":[[{"run_id":"%s","parent-run-id":"p-1","event":"feedback"}]]}' % (
        RUN.encode()
    )
    reader = encoded(body, encoding).reader(COMPRESS[encoding](body))
    assert read_all(reader) == read_all(IngestReader(body)) == {RUN, ingest_run_uuid("p-1")}


def test_concatenated_gzip_members_are_all_read_as_node_reads_them() -> None:
    first, second = b'{"events":[{"runId":"one",', b'"parentRunId":"two"}]}'
    reader = encoded(b"", "gzip").reader(gzip.compress(first) + gzip.compress(second))
    assert read_all(reader) == {ingest_run_uuid("one"), ingest_run_uuid("two")}


def events_body(count: int, filler: int) -> bytes:
    events = [{"runId": f"run-{i}", "input": "x" * filler, "parentRunId": f"p-{i}"}
              for i in range(count)]  # fmt: skip
    return orjson.dumps({"events": events})


def test_a_body_of_more_gzip_members_than_the_bound_is_unreadable() -> None:
    members = [gzip.compress(b'{"events":[{"runId":"one"}]}')] + [gzip.compress(b"")] * 63
    assert read_all(encoded(b"", "gzip").reader(b"".join(members))) == {ingest_run_uuid("one")}
    too_many = b"".join(members) + gzip.compress(b"")
    assert unreadable_because(encoded(b"", "gzip").reader(too_many)) == Unreadable.ENCODED


def test_ids_across_every_piece_boundary_of_an_inflating_stream_are_all_read_all() -> None:
    body = events_body(450, 601)  # ids fall at every offset of the 64 KiB pieces
    assert len(body) > 3 * PIECE_BYTES
    expected = {ingest_run_uuid(f"run-{i}") for i in range(450)}
    expected |= {ingest_run_uuid(f"p-{i}") for i in range(450)}
    assert read_all(encoded(body, "gzip").reader(gzip.compress(body))) == expected


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.text("abcdef0123456789-", min_size=1, max_size=40), max_size=30),
    filler=st.integers(0, 3000),
    cuts=st.lists(st.integers(1, 5000), max_size=40),
)
def test_a_body_read_in_pieces_names_what_the_whole_body_names(
    ids: list[str], filler: int, cuts: list[int]
) -> None:
    """The reader holds only a window of a stream: where the pieces break must not matter."""
    body = orjson.dumps({"events": [{"runId": i, "x": " " * filler} for i in ids]})
    bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    pieces = iter([body[a:b] for a, b in itertools.pairwise(bounds)])
    assert (
        read_all(IngestReader(pieces))
        == read_all(IngestReader(body))
        == {filed_run_id(i) for i in ids}
    )


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"not gzip at all", "gzip"),
        (gzip.compress(b'{"events":[{"runId":"x"}]}')[:-6], "gzip"),  # truncated
        (gzip.compress(b'{"events":[]}') + b"trailing", "gzip"),
        (deflate(b'{"events":[]}') + deflate(b"{}"), "deflate"),
        (zlib.compress(b'{"events":[]}')[2:-4], "deflate"),  # raw deflate: no zlib header
        (b"", "gzip"),
    ],
)
def test_a_body_that_does_not_inflate_as_its_encoding_says_is_unreadable_because(
    body: bytes, encoding: str
) -> None:
    assert unreadable_because(encoded(b"", encoding).reader(body)) == Unreadable.ENCODED


def test_a_bomb_inflates_no_further_than_lunary_reads_and_holds_one_piece_at_a_time() -> None:
    bomb = gzip.compress(b"[" + b" " * (4 * MAX_INFLATED_BYTES) + b"]", compresslevel=9)
    assert len(bomb) < MAX_INFLATED_BYTES // 100  # a small upload
    tracemalloc.start()
    try:
        reason = unreadable_because(encoded(b"", "gzip").reader(bomb))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == Unreadable.TOO_LARGE
    assert peak < 8 * PIECE_BYTES  # measured: about 3 pieces (one held, one new, a copy)


def test_inflating_and_reading_yield_in_short_steps() -> None:
    body = b'{"events":[' + b'{"runId":"same"},' * 1_000_000 + b"{}]}"
    costs, stopped = step_costs(encoded(b"", "gzip").reader(gzip.compress(body)))
    assert stopped is None
    assert len(costs) >= len(body) // STEP_BYTES
    assert max(costs) < 0.025  # measured: about 1 ms


# -- OTLP traces ---------------------------------------------------------------------------------


HIDDEN = bytes.fromhex("a1a2a3a4a5a6a7a8")


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, by hand (the library writes only well-formed ones)."""
    length, encoded = len(payload), b""
    while length >= 0x80:
        encoded, length = encoded + bytes([length & 0x7F | 0x80]), length >> 7
    return bytes([number << 3 | 2]) + encoded + bytes([length]) + payload


def in_span(content: bytes) -> bytes:
    """An export of one span of these bytes (ExportTraceServiceRequest > ResourceSpans >
    ScopeSpans > Span)."""
    return field(1, field(2, field(2, content)))


def nested(inner: bytes, depth: int) -> bytes:
    for _ in range(depth):
        inner = field(5, field(1, inner))  # AnyValue.array_value.values[0]
    return inner


def test_every_span_and_parent_is_the_run_lunary_files_it_under() -> None:
    links = [Span.Link(trace_id=b"t" * 16, span_id=b"linked!!")]
    events = [Span.Event(name="gen_ai.choice", attributes=[KeyValue(key="spanId")])]
    body = traces(
        [span(b"\x01" * 8), span(b"\x02" * 8, parent=b"\x01" * 8, links=links, events=events)],
        [span(b"\xff" * 8, parent=b"\xee" * 8)],
    )
    reader = form(b"/V1/Traces/", PROTOBUF).reader(body)
    # a linked span is no run of this export: Lunary maps only span_id and parent_span_id
    assert read_all(reader) == {span_run(b"\x01" * 8), span_run(b"\x02" * 8), span_run(b"\xff" * 8),
                            span_run(b"\xee" * 8)}  # fmt: skip
    assert span_run(b"\x01" * 8) == ingest_run_uuid("0101010101010101")


def test_a_trace_export_is_applied_after_the_answer_and_a_log_export_is_no_ingest() -> None:
    """Lunary writes spans after answering; its /v1/logs makes no runs (commit a86d698)."""
    assert form(
        b"/v1/traces", [(b"content-type", b"application/x-protobuf; x=1")]
    ).applied_after_answer
    assert not form(b"/v1/runs/ingest", JSON).applied_after_answer
    assert not is_ingest(b"/v1/logs")


@pytest.mark.parametrize(
    "body",
    [
        traces([span(b"\x01" * 8)])[:-3],  # truncated
        b"\x0a\xff\xff\xff\xff\x0f",  # a length past the end
        b"\x0b\x0c",  # a group, which ts-proto skips but no exporter writes
        b"\x0f",  # wire type 7
        b"\x00\x00",  # tag 0: ts-proto stops reading there
        b"\x0a\x02\x12",  # a resource's length past what it holds
        b"\x8a" + b"\x80" * 10 + b"\x01",  # a varint longer than 10 bytes
        # a message nested where no span is, that ts-proto ends early (tag 0, an end-group
        # tag) or reads past (a string longer than it): its parent reads on from inside it,
        # where it finds a span_id the bytes hide (found by comparing with ts-proto itself)
        in_span(field(9, b"\x00" + field(2, HIDDEN))),  # an attribute opening with tag 0
        in_span(field(9, b"\x0c" + field(2, HIDDEN))),  # with an end-group tag
        in_span(b"\x4a\x02\x0a\x02" + b"\x2a\x0a" + field(2, HIDDEN)),  # a key past its end
        in_span(field(11, b"\x00" + field(2, HIDDEN))),  # an event
        in_span(field(13, b"\x00" + field(2, HIDDEN))),  # a link
        in_span(field(15, b"\x00" + field(2, HIDDEN))),  # the status
        in_span(field(9, field(2, b"\x00"))),  # an attribute's value
        field(1, field(1, b"\x00" + field(2, field(2, field(2, HIDDEN))))),  # the resource
        field(1, field(2, field(1, b"\x00" + field(2, field(2, HIDDEN))))),  # the scope
        field(1, field(1, field(3, b"\x00"))),  # an entity reference of the resource
        # values in lists in values, deeper than ts-proto's stack would go for an exporter
        in_span(field(9, field(2, nested(field(5, field(1, b"")), 40)))),
    ],
)
def test_an_export_that_is_not_protobuf_as_lunary_decodes_it_is_unreadable_because(
    body: bytes,
) -> None:
    assert unreadable_because(form(b"/v1/traces", PROTOBUF).reader(body)) == Unreadable.NOT_PROTOBUF


def test_more_spans_than_a_body_may_name_is_unreadable_because() -> None:
    spans = [span(i.to_bytes(8, "big")) for i in range(MAX_RUNS + 1)]
    assert unreadable_because(form(b"/v1/traces", PROTOBUF).reader(traces(spans))) == (
        Unreadable.TOO_MANY_RUNS
    )
    same = [span(b"\x01" * 8) for _ in range(MAX_RUNS + 1)]  # the same span again and again
    assert read_all(form(b"/v1/traces", PROTOBUF).reader(traces(same))) == {span_run(b"\x01" * 8)}


def test_an_exporters_batch_is_read_whole() -> None:
    attributes = [attribute(f"gen_ai.request.k{i}", "v") for i in range(100)]
    spans = [span(i.to_bytes(8, "big"), attributes=attributes) for i in range(512)]
    assert len(read_all(form(b"/v1/traces", PROTOBUF).reader(traces(spans)))) == 512


def test_an_export_of_millions_of_fields_is_walked_no_further_than_a_bound() -> None:
    """Walking a field costs about a microsecond: a 20 MiB body of 2-byte fields would cost
    seconds of CPU, so past MAX_FIELDS the proxy stops and cuts."""
    attributes = [KeyValue(key="k", value=AnyValue(int_value=1))] * (MAX_FIELDS // 4)
    body = traces([span(b"\x01" * 8, attributes=attributes)] * 5)
    costs, stopped = step_costs(form(b"/v1/traces", PROTOBUF).reader(body))
    assert stopped == Unreadable.TOO_MANY_FIELDS
    assert len(costs) >= MAX_FIELDS * 2 // STEP_BYTES  # every attribute is 2 bytes and more
    assert max(costs) < 0.05  # measured: 3-6 ms


# -- the Invalidator ------------------------------------------------------------------------------


async def cache(store: MemoryStore, key: EntryKey) -> None:
    """Store an entry as a fill would: under the run's generation of the moment."""
    generation = (await store.lookup(key)).generation
    await store.save(key, dataclasses.replace(settled_entry(), generation=generation))
    assert (await store.lookup(key)).entry is not None


async def test_runs_lunary_writes_after_answering_are_dropped_again_later() -> None:
    """A read between the export's answer and Lunary's write caches the run as it was; the
    later drops replace it."""
    store = MemoryStore(10)
    # drops due 0.3-0.55 s and 1.5-2.05 s after (rounded up to a quarter second)
    invalidator = invalidator_over(store, drop_again_after=(0.3, 1.5))
    key = EntryKey(span_run(b"\x01" * 8), "run:s")
    await cache(store, key)

    await invalidator.ingest(form(b"/v1/traces", PROTOBUF), traces([span(b"\x01" * 8)]), "s")
    dropped = [(await store.lookup(key)).entry is None]
    for wait in (1.0, 1.5, 0.6):
        await cache(store, key)  # a read that raced Lunary's write
        await asyncio.sleep(wait)
        dropped.append((await store.lookup(key)).entry is None)
    await invalidator.close()

    assert dropped == [True, True, True, False]  # at once, twice later, and no more


async def test_an_export_past_what_may_wait_for_later_drops_cuts_instead() -> None:
    registry = CollectorRegistry()
    invalidator = invalidator_over(MemoryStore(10), metrics=Metrics(registry))
    exports = [
        traces([span((export * MAX_RUNS + i).to_bytes(8, "big")) for i in range(MAX_RUNS)])
        for export in range(MAX_PENDING // MAX_RUNS + 1)
    ]
    for export in exports:
        await invalidator.ingest(form(b"/v1/traces", PROTOBUF), export, "s")
    await invalidator.close()

    cut = registry.get_sample_value("lunary_proxy_cuts_total", {"reason": "later_drops_full"})
    assert cut == 1  # the last: every earlier export's runs wait for their later drops
