"""Lunary knowledge: run-id spellings, which runs have settled, ids that ingest maps to UUIDs."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

# Postgres' uuid_in: optional matching braces around 32 hex digits, with an optional hyphen
# after any group of four digits (but not at the end).
_PG_UUID = re.compile(r"(?P<open>\{)?(?P<hex>[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7})(?(open)\})")
UNSETTLED_TYPES = frozenset({"thread", "chat"})
SETTLED_STATUSES = frozenset({"success", "error"})
# the event keys whose values name a run Lunary changes (after ingest_key)
INGEST_ID_KEYS = frozenset({"runId", "parentRunId"})
# what separates words in the key spellings Lunary camelCases
INGEST_KEY_SEPARATORS = "-_. "
_SEPARATORS = re.compile("[" + re.escape(INGEST_KEY_SEPARATORS) + "]")
_ID_KEYS_FOLDED = {key.lower(): key for key in INGEST_ID_KEYS}


def canonical_run_id(segment: str) -> str | None:
    """The canonical lower-case hyphenated form of a Postgres UUID spelling, else None."""
    match = _PG_UUID.fullmatch(segment)
    if match is None:
        return None
    digits = match["hex"].replace("-", "").lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def is_settled(run: Mapping[str, Any]) -> bool:
    """True when a run can change no more except out of band (feedback, tags, retention...)."""
    return (
        run.get("status") in SETTLED_STATUSES
        and bool(run.get("endedAt"))
        and run.get("type") not in UNSETTLED_TYPES
    )


def body_is_settled(body: object) -> bool:
    """Whether a decoded run (object) or related-runs (array) body holds only settled runs.

    An empty related array counts as unsettled: the run may simply not exist yet.
    """
    if isinstance(body, dict):
        return is_settled(body)
    if isinstance(body, list):
        return bool(body) and all(isinstance(row, dict) and is_settled(row) for row in body)
    return False


def ingest_run_uuid(run_id: str) -> str:
    """The UUID Lunary files an ingested id under: ids not 36 characters long are hashed."""
    if len(run_id) == 36:
        return run_id.lower()
    h = hashlib.sha256(run_id.encode()).hexdigest()
    return f"{h[0:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def ingest_key(key: str) -> str:
    """The name Lunary reads an id key under: it camelCases every key of every event
    (UPSTREAM.md), so `run_id`, `run-id`, `RUN_ID` and `runID` are all `runId`. Read loosely
    (case and separators ignored): taking a key for an id that Lunary does not only costs a
    refetch; missing one leaves a stale entry."""
    return _ID_KEYS_FOLDED.get(_SEPARATORS.sub("", key).lower(), key)


def ingest_targets(document: object) -> tuple[set[str], set[str]] | None:
    """The runs an ingest body touches: (every `runId`, every `parentRunId`), as Lunary files them.

    None when the body is not `{"events": <event or list of events>}`. This reads a decoded
    body; the proxy reads raw bytes (proxy/ingest/reader.py), which must find at least these.
    """
    if not isinstance(document, dict) or "events" not in document:
        return None
    events = document["events"]
    events = events if isinstance(events, list) else [events]
    runs: set[str] = set()
    parents: set[str] = set()
    for event in events:
        if not isinstance(event, dict):
            continue
        for key, value in event.items():
            field = ingest_key(key)
            found = runs if field == "runId" else parents if field == "parentRunId" else None
            if found is None:
                continue
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                found.add(filed_run_id(str(value)))
    return runs, parents


def filed_run_id(run_id: str) -> str:
    """Lunary hashes every id that is not 36 characters long, UUID-like or not."""
    if len(run_id) == 36:
        return canonical_run_id(run_id) or run_id.lower()
    return ingest_run_uuid(run_id)
