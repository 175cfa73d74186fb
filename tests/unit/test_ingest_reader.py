"""The ingest reader finds every run an ingest body names, in bounded memory and short steps,
and what it cannot read makes the Invalidator fail safe."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import tracemalloc
import zlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from proxy.cache.invalidation import DROPS_AT_ONCE, UNREADABLE_LOG_EVERY, Invalidator
from proxy.core.cuts import Cuts
from proxy.core.model import Entry, EntryKey
from proxy.core.runs import filed_run_id, ingest_run_uuid, ingest_targets
from proxy.ingest.forms import IngestForm, ingest_form
from proxy.ingest.reader import (
    MAX_GAP,
    MAX_ID_LENGTH,
    MAX_RUNS,
    MAX_SAFE_INTEGER,
    STEP_BYTES,
    IngestReader,
    Unreadable,
)
from proxy.ops.metrics import Metrics
from proxy.store.cutting import CuttingStore
from proxy.store.guard import GuardedStore
from proxy.store.memory import MemoryStore
from tests.readers import invalidator_over, read_all, settled_entry, step_costs, unreadable_because

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


def read(body: bytes) -> set[str]:
    return read_all(IngestReader(body))


def unreadable(body: bytes) -> Unreadable:
    return unreadable_because(IngestReader(body))


def ids(*values: str) -> set[str]:
    return {filed_run_id(value) for value in values}


# -- what it reads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"events":[{"runId":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11","parentRunId":"p-1"}]}',
        b'{"events":{"runId":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11","parentRunId":"p-1"}}',
        b'{"runId":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11","parentRunId":"p-1"}',  # a bare event
        b'{"events":[[{"runId":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"}],[{"parentRunId":"p-1"}]]}',
        b'\xef\xbb\xbf {\n  "events" : [ {\n "runId"\t:\r\n "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",'
        b' "parentRunId" :"p-1" } ]\n}\n',
        # keys spelled with escapes, as an encoder escaping ASCII would write them
        b'{"events":[{"run\\u0049d":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",'
        b'"\\u0070are\\u006Et\\u0052unId":"p-1"}]}',
        # the same id twice, and a nested object naming the same runs
        b'{"events":[{"runId":"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11","parentRunId":"p-1",'
        b'"meta":{"runId":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}},{"parentRunId":"p-1"}]}',
    ],
)
def test_every_run_and_parent_is_read_in_any_layout_and_spelling(body: bytes) -> None:
    assert read(body) == {RUN, ingest_run_uuid("p-1")}


def test_values_are_read_as_lunary_reads_them() -> None:
    body = (
        b'{"events":[{"runId":"a\\/b"},{"runId":"\\u00e9t\\u00e9 \\"x\\""},{"runId":"\xc3\xa9"},'
        b'{"runId":42},{"runId":-7},{"parentRunId":9007199254740992},{"runId":""},'
        b'{"runId":null},{"runId":true},{"runId":false},{"runId":{}},{"runId":[]}]}'
    )

    assert read(body) == ids("a/b", 'été "x"', "é", "42", "-7", "9007199254740992")


def test_id_keys_inside_string_values_name_nothing() -> None:
    body = orjson.dumps(
        {
            "events": [
                {
                    "input": '{"runId": "in-a-string", "parentRunId": "also"}',
                    "type": "runId",
                    "note": 'ends with "runId',
                    "runId": "real",
                }
            ]
        }
    )

    assert read(body) == ids("real")


def test_a_key_ending_in_an_escaped_id_key_is_read_too_which_is_safe() -> None:
    # `x"runId` is not an id key: reading its value costs one refetch, and no run is missed
    assert read(b'{"events":[{"x\\"runId":"extra","runId":"real"}]}') == ids("extra", "real")


@pytest.mark.parametrize("offset", range(-60, 8))
def test_pairs_across_a_slice_boundary_are_read(offset: int) -> None:
    """Every placement of an id pair around the first slice boundary, in both spellings."""
    for key in (b"runId", b"run\\u0049d"):
        head = b'{"events":[{"pad":"'
        pad = b"x" * (STEP_BYTES + offset - len(head) - 2)  # the key's quote at STEP + offset
        body = head + pad + b'","' + key + b'" : "r"}]}'
        assert body.index(key) - 1 == STEP_BYTES + offset
        assert read(body) == ids("r")


@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "runId": st.one_of(
                    st.text(max_size=40),
                    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
                    st.none(),
                    st.booleans(),
                ),
                "parentRunId": st.one_of(st.text(max_size=40), st.integers(0, 10**6)),
                "input": st.text(
                    alphabet=st.sampled_from('runIdparentR"\\:{}[], \n\u00e9'), max_size=60
                ),
                "tags": st.lists(st.text(max_size=8), max_size=3),
            },
        ),
        max_size=8,
    ),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, 1, 4]),
)
def test_it_reads_every_run_the_decoded_body_names(
    events: list[dict[str, object]], single: bool, ascii_only: bool, indent: int | None
) -> None:
    document = {"events": events[0] if single and events else events}
    body = json.dumps(document, ensure_ascii=ascii_only, indent=indent).encode()
    targets = ingest_targets(document)
    assert targets is not None

    runs, parents = targets
    assert read(body) == runs | parents


# -- what it cannot read ----------------------------------------------------------------------

EVENTS = orjson.dumps({"events": [{"runId": RUN}]})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", Unreadable.NOT_JSON),
        (gzip.compress(EVENTS), Unreadable.NOT_JSON),
        (zlib.compress(EVENTS), Unreadable.NOT_JSON),
        (b"\x0a\x0b\x12 an OTLP protobuf export", Unreadable.NOT_JSON),
        (b"events[0][runId]=" + RUN.encode(), Unreadable.NOT_JSON),  # a form
        (EVENTS.decode().encode("utf-16"), Unreadable.NOT_JSON),
        (EVENTS.decode().encode("utf-16-le"), Unreadable.NOT_JSON),
        (b"{" + b" " * STEP_BYTES * 3 + b"\0}", Unreadable.NOT_JSON),
        (b" " * (MAX_GAP + 1) + EVENTS, Unreadable.NOT_JSON),
        (b'{"runId":"\xff\xfe"}', Unreadable.ID_VALUE),  # not UTF-8
        (b'{"runId":"\\ud800"}', Unreadable.ID_VALUE),  # a lone surrogate
        (b'{"runId":"\\x"}', Unreadable.ID_VALUE),
        (b'{"runId":1.0}', Unreadable.ID_VALUE),  # JavaScript reads it as "1"
        (b'{"runId":1e3}', Unreadable.ID_VALUE),
        (b'{"runId":9007199254740993}', Unreadable.ID_VALUE),
        (b'{"runId":12345678901234567890}', Unreadable.ID_VALUE),
        (b'{"runId":"' + b"x" * (MAX_ID_LENGTH + 1) + b'"}', Unreadable.ID_VALUE),
        (b'{"runId"' + b" " * (MAX_GAP + 1) + b':"x"}', Unreadable.ID_VALUE),
        (b'{"runId":' + b"\n" * (MAX_GAP + 1) + b'"x"}', Unreadable.ID_VALUE),
        (b'{"runId":"unterminated', Unreadable.ID_VALUE),
    ],
)
def test_what_it_cannot_read_exactly_is_unreadable(body: bytes, reason: Unreadable) -> None:
    assert unreadable(body) == reason


def test_ids_past_the_bound_are_unreadable() -> None:
    def body(count: int) -> bytes:
        return orjson.dumps({"events": [{"runId": f"r{i}"} for i in range(count)]})

    assert len(read(body(MAX_RUNS))) == MAX_RUNS
    assert read(b'{"runId":"' + b"x" * MAX_ID_LENGTH + b'"}') == ids("x" * MAX_ID_LENGTH)
    assert unreadable(body(MAX_RUNS + 1)) == Unreadable.TOO_MANY_RUNS


# -- what it costs ----------------------------------------------------------------------------


def bomb(unit: bytes, size: int) -> bytes:
    return b'{"events":[' + unit * (size // len(unit)) + b"{}]}"


@pytest.mark.parametrize(
    "unit",
    [b"{},", b'{"a":"b"},', b'{"runId":"same"},', b'{"run\\u0049d":"same"},'],
)
def test_memory_does_not_grow_with_events(unit: bytes) -> None:
    body = bomb(unit, 2 * 1024 * 1024)
    tracemalloc.start()
    try:
        read(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 64 * 1024


def test_every_step_is_short() -> None:
    """Each step reads one slice (the caller yields between them) and costs a few ms of CPU,
    for the bodies that cost the most per byte: every event naming a run, new or known."""
    worst = {
        "new ids": orjson.dumps({"events": [{"runId": f"r{i}"} for i in range(MAX_RUNS)]}),
        "known ids": bomb(b'{"runId":"same"},', 4 * 1024 * 1024),
        "escaped keys": bomb(b'{"run\\u0049d":"same"},', 4 * 1024 * 1024),
    }
    for name, body in worst.items():
        costs, stopped = step_costs(IngestReader(body))
        assert stopped is None, name
        assert len(costs) >= len(body) // STEP_BYTES, name
        assert max(costs) < 0.025, name  # measured: under 3 ms


async def test_ingest_lets_the_loop_run_between_slices() -> None:
    body = bomb(b"{},", 2 * 1024 * 1024)
    invalidator = invalidator_over(MemoryStore(10))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks = 0
    await invalidator.ingest(IngestForm(), body, "writer")
    ticking.cancel()

    assert ticks >= len(body) // STEP_BYTES


# -- the Invalidator ----------------------------------------------------------------------------


async def test_ingest_drops_the_runs_it_reads_and_no_other() -> None:
    store = MemoryStore(10)
    other = "b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    for run in (RUN, ingest_run_uuid("p-1"), other):
        await store.save(EntryKey(run, "run:s"), settled_entry())
    invalidator = invalidator_over(store)

    await invalidator.ingest(
        IngestForm(), b'{"events":[{"runId":"%s","parentRunId":"p-1"}]}' % RUN.encode(), "writer"
    )

    assert (await store.lookup(EntryKey(RUN, "run:s"))).entry is None
    assert (await store.lookup(EntryKey(ingest_run_uuid("p-1"), "run:s"))).entry is None
    assert (await store.lookup(EntryKey(other, "run:s"))).entry is not None


async def test_an_unreadable_body_cuts_counted_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    now, wall = [1000.0], [1.8e9]
    cuts = Cuts(active_ttl=2)
    reads = CuttingStore(GuardedStore(MemoryStore(10), metrics), cuts, clock=lambda: wall[0])
    for scope in ("writer", "other"):
        stored = Entry(200, "application/json", b"{}", '"e"', wall[0] - 10, 60, 600)
        await reads.save(EntryKey(RUN, f"run:{scope}", scope), stored)
    detached = []
    invalidator = Invalidator(
        reads,
        metrics,
        keep_for=60,
        cuts=cuts,
        cut_window=3,
        on_cut=lambda: detached.append(True),
        clock=lambda: now[0],
        wall_clock=lambda: wall[0],
    )
    secret_body = gzip.compress(b'{"events":[{"runId":"secret-run"}]}')

    with caplog.at_level(logging.WARNING, logger="proxy.cache.invalidation"):
        await invalidator.ingest(IngestForm(), secret_body, "writer")
        now[0] += 1
        await invalidator.ingest(IngestForm(), b'{"runId":1.5}', "writer")
        now[0] += UNREADABLE_LOG_EVERY
        await invalidator.ingest(IngestForm(), b"{}" + b"\0", "writer")

    writers = await reads.lookup(EntryKey(RUN, "run:writer", "writer"))
    others = await reads.lookup(EntryKey(RUN, "run:other", "other"))
    assert writers.entry is None  # the writer reads its own write at once
    assert others.entry is not None  # everyone else: fresh at most the active-run TTL
    assert others.entry.fresh_for == 12
    assert others.entry.stale_for == 0
    assert detached == [True] * 3  # fills under way are joined by no later request
    assert registry.get_sample_value("lunary_proxy_ingest_unparsed_total") == 3
    lines = [(r.getMessage(), r.__dict__["reason"], r.__dict__["unlogged_since"])
             for r in caplog.records]  # fmt: skip
    message = (
        "a write may have changed runs the proxy cannot name: entries stored before it are cut"
    )
    assert lines == [(message, "not_json", 0), (message, "not_json", 1)]
    assert "secret" not in caplog.text


# -- keys as Lunary camelCases them, and what the headers alone make unreadable ----------------


@pytest.mark.parametrize(
    "key", ["runId", "run_id", "run-id", "RUN_ID", "runID", "Run Id", "run.id", "run\\u005fid"]
)
def test_every_spelling_lunary_camelcases_to_an_id_key_is_read(key: str) -> None:
    body = b'{"events":[[{"%s":"legacy-1","parent_run_id":"p-1"}]]}' % key.encode()
    assert read(body) == {ingest_run_uuid("legacy-1"), ingest_run_uuid("p-1")}


def test_a_key_that_only_looks_like_an_id_key_in_a_value_is_not_read() -> None:
    assert read(b'{"events":[{"note":"run_id","x":"parentRunId"}]}') == set()


@pytest.mark.parametrize(
    ("path", "headers", "reason"),
    [
        (b"/v1/traces", [(b"content-type", b"application/json")], Unreadable.NOT_PROTOBUF),
        (b"/V1/Traces/", [], Unreadable.NOT_PROTOBUF),
        (b"/v1/runs/ingest", [(b"content-encoding", b"br")], Unreadable.ENCODED),
        (b"/v1/runs/ingest", [(b"content-encoding", b"gzip")] * 2, Unreadable.ENCODED),
        (b"/v1/runs/ingest", [(b"content-type", b"text/plain")], Unreadable.NOT_JSON),
        (b"/v1/runs/ingest", [(b"content-type", b"application/x-www-form-urlencoded")],
         Unreadable.NOT_JSON),
        (b"/v1/runs/ingest", [(b"content-type", b"application/json; charset=utf-8")], None),
        (b"/api/report", [(b"content-type", b"application/vnd.lunary+json")], None),
        (b"/v1/runs/ingest", [(b"content-encoding", b"identity")], None),
        (b"/v1/runs/ingest", [], None),
    ],
)  # fmt: skip
def test_what_the_headers_alone_make_unreadable(
    path: bytes, headers: list[tuple[bytes, bytes]], reason: Unreadable | None
) -> None:
    form = ingest_form(path, headers)
    assert (form if isinstance(form, Unreadable) else None) == reason


async def test_an_ingest_of_many_runs_drops_them_a_few_at_a_time() -> None:
    """A large body never queues all its invalidations for the store's pool at once."""

    class Counting(MemoryStore):
        def __init__(self) -> None:
            super().__init__(max_entries=10)
            self.in_flight = self.most = self.calls = 0

        async def invalidate_run(self, run_id: str, keep_for: float) -> int:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            await asyncio.sleep(0.001)
            self.in_flight -= 1
            self.calls += 1
            return await super().invalidate_run(run_id, keep_for)

    store = Counting()
    invalidator = invalidator_over(store)
    events = [{"runId": f"r{i}"} for i in range(MAX_RUNS)]

    await invalidator.ingest(IngestForm(), orjson.dumps({"events": events}), "writer")

    assert store.calls == MAX_RUNS
    assert store.most == DROPS_AT_ONCE
