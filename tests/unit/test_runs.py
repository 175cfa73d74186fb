"""Lunary knowledge: UUID spellings, settled runs, ingest id mapping."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.runs import (
    body_is_settled,
    canonical_run_id,
    ingest_run_uuid,
    ingest_targets,
    is_settled,
)

CANONICAL = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


@pytest.mark.parametrize(
    "spelling",
    [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
    ],
)
def test_postgres_spellings_map_to_the_canonical_id(spelling: str) -> None:
    assert canonical_run_id(spelling) == CANONICAL


@pytest.mark.parametrize(
    "segment",
    [
        "count",
        "usage",
        "export",
        "not-a-uuid",
        "",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",  # 31 digits
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",  # 33 digits
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",  # unbalanced brace
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11",  # hyphen inside a group of four
        "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
        "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
        "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ],
)
def test_non_uuids_are_not_run_ids(segment: str) -> None:
    assert canonical_run_id(segment) is None


@given(st.uuids(), st.booleans(), st.booleans(), st.lists(st.booleans(), min_size=7, max_size=7))
def test_every_spelling_of_a_uuid_has_one_canonical_id(
    value: uuid.UUID, upper: bool, braces: bool, hyphens: list[bool]
) -> None:
    digits = value.hex.upper() if upper else value.hex
    groups = [digits[i : i + 4] for i in range(0, 32, 4)]
    text = groups[0] + "".join(
        ("-" if h else "") + g for h, g in zip(hyphens, groups[1:], strict=True)
    )
    if braces:
        text = "{" + text + "}"

    assert canonical_run_id(text) == str(value)


def run(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "status": "success",
        "endedAt": "2026-01-01T00:00:00Z",
        "type": "llm",
    }
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("fields", "settled"),
    [
        ({}, True),
        ({"status": "error"}, True),
        ({"status": "started"}, False),
        ({"status": None}, False),
        ({"endedAt": None}, False),
        ({"type": "thread"}, False),
        ({"type": "chat"}, False),
        ({"type": "custom-event"}, True),
    ],
)
def test_settled_runs(fields: dict[str, object], settled: bool) -> None:
    assert is_settled(run(**fields)) is settled


def test_related_arrays_settle_only_when_every_run_has() -> None:
    assert body_is_settled([run(), run()]) is True
    assert body_is_settled([run(), run(status="started")]) is False
    assert body_is_settled([]) is False
    assert body_is_settled([run(), "junk"]) is False
    assert body_is_settled(42) is False


def test_ingest_ids_map_as_lunary_does() -> None:
    # sha256("my-run") starts b4dbeadf14680183dd0ed4560af5dd92; version 4 and variant a forced
    assert ingest_run_uuid("my-run") == "b4dbeadf-1468-4183-ad0e-d4560af5dd92"
    assert ingest_run_uuid(CANONICAL.upper()) == CANONICAL


def test_ingest_targets_name_runs_and_parents() -> None:
    body = {
        "events": [
            {"runId": CANONICAL.upper(), "parentRunId": "parent-1"},
            {"runId": 42},
            {"runId": None},
            "junk",
        ]
    }

    targets = ingest_targets(body)

    assert targets == ({CANONICAL, ingest_run_uuid("42")}, {ingest_run_uuid("parent-1")})
    assert ingest_targets({"events": {"runId": CANONICAL}}) == ({CANONICAL}, set())
    assert ingest_targets({"no": "events"}) is None
    assert ingest_targets([1, 2]) is None


def test_ids_that_are_not_36_characters_are_hashed_even_when_uuid_like() -> None:
    hex32 = CANONICAL.replace("-", "")
    braced = "{" + CANONICAL + "}"

    assert ingest_targets({"events": [{"runId": hex32}]}) == ({ingest_run_uuid(hex32)}, set())
    assert ingest_targets({"events": [{"runId": braced}]}) == ({ingest_run_uuid(braced)}, set())
    assert ingest_run_uuid(hex32) != CANONICAL
