"""The stored format: byte-for-byte round trips; anything foreign or damaged is refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.model import Entry
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
