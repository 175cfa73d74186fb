"""Every way a client can change a run, through one replica, is seen at once through the other.

Each test caches both routes of a settled run through replica one (a HIT), writes through
replica two, and reads through replica one again: a MISS answering what Lunary answers now,
never the cached body. PATCH and DELETE carry the reader's own credential; ingests carry project
A1's public key as the SDKs do (another scope than the reader's), and `/api/report` none.
Lunary applies OTLP spans after it answers, so those are polled for, within APPLY_SECONDS.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.real_lunary.events import Event, Run, event, otlp_export, token
from tests.real_lunary.tier import (
    JWT,
    Tier,
    assert_same_answer,
    bearer,
    body_diff,
    describe,
    poll,
)

pytestmark = pytest.mark.real_lunary

APPLY_SECONDS = 5.0  # Lunary applies an OTLP export within milliseconds of answering it

Send = Callable[[Tier, Run, str], httpx.Response]  # through replica two, writing the token
Shows = Callable[[httpx.Response, str], bool]  # whether Lunary's run answer carries the write


@dataclass(frozen=True)
class Write:
    name: str
    send: Send
    shows: Shows
    run: Callable[[], Run] = Run.fresh
    applied_after_answer: bool = False
    needs_jwt: bool = False


def showing(key: str, value: Callable[[str], object]) -> Shows:
    return lambda answer, written: (
        answer.status_code == 200 and answer.json()[key] == value(written)
    )


def shows_output(answer: httpx.Response, written: str) -> bool:
    return showing("output", lambda t: t)(answer, written)


def shows_score(answer: httpx.Response, written: str) -> bool:
    score = {"label": written, "value": 0.5, "comment": None}
    return answer.status_code == 200 and score in answer.json()["scores"]


def patch(suffix: str, body: Callable[[str], dict[str, Any]]) -> Send:
    return lambda tier, run, written: tier.two.patch(
        run.path + suffix, headers=tier.reader, json=body(written)
    )


def ingest(document: Callable[[Run, str], object]) -> Send:
    return lambda tier, run, written: tier.two.post(
        "/v1/runs/ingest", headers=tier.ingester, json=document(run, written)
    )


def end(run: Run, written: str, id_key: str = "runId") -> Event:
    return event("end", run.sent_id, id_key, output=written)


def encoded(encoding: str, compress: Callable[[bytes], bytes]) -> Send:
    def send(tier: Tier, run: Run, written: str) -> httpx.Response:
        body = compress(json.dumps({"events": [end(run, written)]}).encode())
        headers = {**tier.ingester, "Content-Type": "application/json"}
        return tier.two.post(
            "/v1/runs/ingest", headers={**headers, "Content-Encoding": encoding}, content=body
        )

    return send


def report(tier: Tier, run: Run, written: str) -> httpx.Response:
    """The legacy route: no credential header, the project named by the first event."""
    events = [end(run, written) | {"projectId": tier.backend.public_key_a}]
    return tier.two.post("/api/report", json={"events": events})


def otlp(tier: Tier, run: Run, written: str) -> httpx.Response:
    headers = {**tier.ingester, "Content-Type": "application/x-protobuf"}
    body = otlp_export(bytes.fromhex(run.sent_id), written)
    return tier.two.post("/v1/traces", headers=headers, content=body)


def delete(tier: Tier, run: Run, written: str) -> httpx.Response:
    """With a dashboard session and ?projectId=: with an API key Lunary's process exits."""
    assert tier.backend.jwt_a is not None
    params = {"projectId": tier.backend.public_key_a}
    return tier.two.delete(run.path, params=params, headers=bearer(tier.backend.jwt_a))


WRITES = [
    Write(
        "PATCH feedback",
        patch("/feedback", lambda t: {"thumb": "up", "comment": t}),
        showing("feedback", lambda t: {"thumb": "up", "comment": t}),
    ),
    Write("PATCH tags", patch("/tags", lambda t: {"tags": [t]}), showing("tags", lambda t: [t])),
    Write("PATCH score", patch("/score", lambda t: {"label": t, "value": 0.5}), shows_score),
    Write(
        "ingest feedback",
        ingest(lambda r, t: {"events": [event("feedback", r.sent_id, feedback={"comment": t})]}),
        showing("feedback", lambda t: {"comment": t}),
    ),
    Write(
        "ingest update",
        ingest(lambda r, t: {"events": [event("update", r.sent_id, metadata={"note": t})]}),
        showing("metadata", lambda t: {"note": t}),
    ),
    Write("ingest end", ingest(lambda r, t: {"events": [end(r, t)]}), shows_output),
    Write("ingest run_id", ingest(lambda r, t: {"events": [end(r, t, "run_id")]}), shows_output),
    Write("ingest run-id", ingest(lambda r, t: {"events": [end(r, t, "run-id")]}), shows_output),
    Write("ingest [[event]]", ingest(lambda r, t: {"events": [[end(r, t)]]}), shows_output),
    Write("ingest bare event", ingest(lambda r, t: {"events": end(r, t)}), shows_output),
    Write("ingest gzip", encoded("gzip", gzip.compress), shows_output),
    Write("ingest deflate", encoded("deflate", zlib.compress), shows_output),
    Write("/api/report", report, shows_output),
    Write(
        "OTLP /v1/traces",
        otlp,
        shows_output,
        run=lambda: Run(os.urandom(8).hex()),  # a span id, hex: hashed to a UUID by Lunary
        applied_after_answer=True,
    ),
    Write("DELETE", delete, lambda answer, _: answer.status_code == 404, needs_jwt=True),
]


def succeeded(answer: httpx.Response) -> bool:
    """A 2xx whose ingest results (if any) all succeeded."""
    if not answer.is_success:
        return False
    document = answer.json() if answer.headers.get("content-type", "").startswith("appl") else {}
    results = document.get("results") if isinstance(document, dict) else document
    return not isinstance(results, list) or all(result.get("success") for result in results)


@pytest.mark.parametrize("write", WRITES, ids=[write.name for write in WRITES])
def test_a_write_through_one_replica_is_read_at_once_through_the_other(
    tier: Tier, write: Write
) -> None:
    if write.needs_jwt and tier.backend.jwt_a is None:
        pytest.skip(f"{JWT} is not set: only a dashboard session deletes a run safely")
    run = write.run()
    tier.create(run, via=tier.one)
    cached = tier.cache(run)
    written = token()

    answer = write.send(tier, run, written)

    assert succeeded(answer), describe(answer)
    if write.applied_after_answer:
        settled = poll(
            lambda: tier.one.get(run.path, headers=tier.reader),
            lambda got: write.shows(got, written),
            APPLY_SECONDS,
        )
        lunary = tier.lunary.get(run.path, headers=tier.reader)
        assert write.shows(settled, written), (
            f"not seen through the proxy within {APPLY_SECONDS} s: {describe(settled)}\n"
            f"Lunary applied it: {write.shows(lunary, written)}\n"
            f"{body_diff(settled.content, lunary.content)}"
        )
    else:
        lunary = tier.lunary.get(run.path, headers=tier.reader)
        assert write.shows(lunary, written), f"Lunary did not apply it: {describe(lunary)}"
    for path in run.paths:
        seen = tier.one.get(path, headers=tier.reader)
        now = tier.lunary.get(path, headers=tier.reader)
        if not write.applied_after_answer:
            assert seen.headers.get("x-cache") == "MISS", (
                f"{describe(seen)}\nthe cached body was the old one: "
                f"{seen.content == cached[path].content}\n{body_diff(seen.content, now.content)}"
            )
        assert_same_answer(seen, now)
        assert_same_answer(tier.two.get(path, headers=tier.reader), now)
