"""The stored format: byte-for-byte round trips; anything foreign or damaged is refused."""

from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import replace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.model import Entry
from proxy.store import codec

ENTRY = Entry(200, "application/json; charset=utf-8", b'{"id":"x"}', '"tag"', 1.7e9, 60, 600, 3)


def test_round_trip_keeps_every_field() -> None:
    assert codec.decode(codec.encode(ENTRY)) == ENTRY


def test_overhead_is_small() -> None:
    encoded = codec.encode(ENTRY)
    assert len(encoded) - len(ENTRY.body) < 100


@given(
    st.sampled_from([200, 404]),
    st.text(max_size=60).map(lambda t: t.encode("utf-8").decode("latin-1")),
    st.binary(max_size=4096),
    st.floats(0, 2e9),
    st.floats(0, 1e5, width=32),
    st.floats(0, 1e5, width=32),
    st.integers(0, 2**63),
)
def test_any_entry_round_trips(
    status: int, content_type: str, body: bytes, stored_at: float, fresh: float, stale: float,
    generation: int,
) -> None:  # fmt: skip
    entry = Entry(status, content_type, body, '"etag"', stored_at, fresh, stale, generation)
    assert codec.decode(codec.encode(entry)) == entry


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world, a foreign value under our key",
        codec.encode(ENTRY)[:20],
        b"XXXX" + codec.encode(ENTRY)[4:],
        codec.encode(ENTRY)[:31] + b"\xff\xff" + codec.encode(ENTRY)[33:],  # content-type length
    ],
    ids=["empty", "foreign", "truncated", "bad-magic", "bad-lengths"],
)
def test_damaged_values_are_refused(data: bytes) -> None:
    with pytest.raises(codec.CorruptEntry):
        codec.decode(data)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_decode_or_raise_corrupt_entry(data: bytes) -> None:
    with contextlib.suppress(codec.CorruptEntry):
        codec.decode(data)


RUN_JSON = orjson.dumps(
    {
        "id": "6b1f0e0c-2f55-4c43-8a2b-9d2c3c1d7a10",
        "output": [{"role": "assistant", "content": "The model answered the question. " * 60}],
    }
)


def test_a_body_that_deflates_well_is_stored_deflated() -> None:
    entry = replace(ENTRY, body=RUN_JSON)
    encoded = codec.encode(entry)
    assert encoded.startswith(codec.DEFLATED)
    assert len(encoded) < len(RUN_JSON) // 2
    assert codec.decode(encoded) == entry


def test_a_body_that_does_not_deflate_is_stored_verbatim() -> None:
    entry = replace(ENTRY, body=os.urandom(4096))
    encoded = codec.encode(entry)
    assert encoded.startswith(codec.MAGIC)
    assert encoded.endswith(entry.body)
    assert codec.decode(encoded) == entry


def test_a_deflated_value_that_inflates_past_the_bound_is_corrupt() -> None:
    """A foreign value under one of our keys must not make a hit inflate gigabytes."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = deflate.compress(b"\0" * (codec.MAX_INFLATED + 1)) + deflate.flush()
    header = codec.encode(replace(ENTRY, body=b""))
    with pytest.raises(codec.CorruptEntry):
        codec.decode(codec.DEFLATED + header[len(codec.MAGIC) :] + bomb)


def test_a_damaged_deflated_body_is_corrupt() -> None:
    encoded = codec.encode(replace(ENTRY, body=RUN_JSON))
    with pytest.raises(codec.CorruptEntry):
        codec.decode(encoded[:-20])
    with pytest.raises(codec.CorruptEntry):
        codec.decode(encoded[:-40] + b"\xff" * 40)


def test_a_body_too_large_to_inflate_back_is_stored_verbatim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec, "MAX_INFLATED", len(RUN_JSON) - 1)
    entry = replace(ENTRY, body=RUN_JSON)
    encoded = codec.encode(entry)
    assert encoded.startswith(codec.MAGIC)
    assert codec.decode(encoded) == entry
