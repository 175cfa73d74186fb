"""The fake Lunary behaves as the real backend was observed to (UPSTREAM.md, last section): the
e2e tests judge the proxy against it, so it must neither invent nor miss what Lunary does."""

from __future__ import annotations

import gzip
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.fake_lunary import FakeLunary
from tests.fake_lunary_runs import seeded_uuid
from tests.otlp import PROTOBUF_HEADERS, logs, span, traces
from tests.servers import ServerThread

JSON = {"Content-Type": "application/json"}
NOT_FOUND = {"message": "Not Found"}
STARTED_TOKENS = {"prompt": None, "cachedPrompt": 0, "completion": None, "total": 0}


@pytest.fixture
def client(upstream: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=upstream.url, timeout=5) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ingest(client: httpx.Client, key: str, body: object, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/runs/ingest", content=orjson.dumps(body), headers={**bearer(key), **JSON, **headers}
    )


def event(kind: str, run: str, **fields: object) -> dict[str, object]:
    return {"type": "llm", "event": kind, "runId": run, **fields}


# -- ingest applies its events ------------------------------------------------------------


def test_a_start_creates_a_started_run_and_end_settles_it(
    client: httpx.Client, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), str(uuid.uuid4())
    at = "2026-01-01T00:00:00Z"
    started = ingest(client, key, {"events": [event("start", run, timestamp=at, input={"q": 1})]})
    body = client.get(f"/v1/runs/{run}", headers=bearer(key)).json()
    related = client.get(f"/v1/runs/{run}/related", headers=bearer(key)).json()
    usage = {"prompt": 3, "completion": 4}
    end = event("end", run, timestamp="2026-01-01T00:00:02.5Z", output="hi", tokensUsage=usage)
    ingest(client, key, {"events": [end]})
    settled = client.get(f"/v1/runs/{run}", headers=bearer(key)).json()

    assert started.json() == {"results": [{"id": run, "success": True}]}
    assert (body["status"], body["endedAt"], body["duration"]) == ("started", None, None)
    assert body["tokens"] == STARTED_TOKENS
    assert body["input"] == {"q": 1, "enrichments": []}  # any object input, not only messages
    assert (body["params"], body["user"], body["traceId"], body["scores"]) == ({}, None, None, [])
    assert body["createdAt"] == "2026-01-01T00:00:00.000Z"
    assert (related[0]["params"], related[0]["cost"], related[0]["input"]) == (None, 0, {"q": 1})
    assert (settled["status"], settled["endedAt"]) == ("success", "2026-01-01T00:00:02.500Z")
    assert (settled["duration"], settled["output"]) == ("00:00:02.5", "hi")
    assert settled["tokens"] == {"prompt": 3, "cachedPrompt": 0, "completion": 4, "total": 7}
    assert settled["cost"] == pytest.approx(0.0000475)


def test_error_feedback_and_update_events_change_their_runs(
    client: httpx.Client, fake: FakeLunary
) -> None:
    key, failed, rated = fake.add_key(), fake.add_run(settled=False), fake.add_run()
    events = [
        event("error", failed, timestamp="2026-01-01T00:00:01Z", error={"message": "boom"}),
        event("feedback", rated, feedback={"thumb": "up"}),
        event("feedback", rated, feedback={"comment": "fine"}),
        event("update", rated, metadata={"a": 1, "nested": {"dropped": True}}),
    ]

    answer = ingest(client, key, {"events": events})
    error = client.get(f"/v1/runs/{failed}", headers=bearer(key)).json()
    feedback = client.get(f"/v1/runs/{rated}/feedback").json()
    updated = client.get(f"/v1/runs/{rated}", headers=bearer(key)).json()

    assert [r["success"] for r in answer.json()["results"]] == [True] * 4
    assert (error["status"], error["endedAt"]) == ("error", "2026-01-01T00:00:01.000Z")
    assert error["error"] == {"message": "boom", "enrichments": []}
    assert feedback == {"thumb": "up", "comment": "fine"}
    assert updated["metadata"] == {"a": 1}  # replaced by the cleaned metadata


def test_a_user_and_a_parent_show_in_the_run(client: httpx.Client, fake: FakeLunary) -> None:
    key, root = fake.add_key(), fake.add_run()
    child = str(uuid.uuid4())

    ingest(client, key, {"events": [event("start", child, parentRunId=root, userId="u-7")]})
    body = client.get(f"/v1/runs/{child}", headers=bearer(key)).json()

    assert body["traceId"] == root
    assert isinstance(body["user"]["id"], int)
    assert body["user"]["externalId"] == "u-7"
    family = client.get(f"/v1/runs/{root}/related", headers=bearer(key)).json()
    assert [row["id"] for row in family] == [root, child]


def feedback(key: str, run: str) -> dict[str, object]:
    return {"event": "feedback", key: run, "feedback": {"thumb": "up"}}


FEEDBACK_SHAPES: dict[str, Callable[[str], object]] = {
    "snake_case": lambda run: {"events": [feedback("run_id", run)]},
    "kebab-case": lambda run: {"events": [feedback("run-id", run)]},
    "a nested list": lambda run: {"events": [[feedback("runId", run)]]},
    "a bare event": lambda run: {"events": feedback("runId", run)},
}


@pytest.mark.parametrize("shape", sorted(FEEDBACK_SHAPES))
def test_every_shape_lunary_reads_changes_the_run(
    client: httpx.Client, fake: FakeLunary, shape: str
) -> None:
    key, run = fake.add_key(), fake.add_run()

    answer = ingest(client, key, FEEDBACK_SHAPES[shape](run))

    assert answer.json()["results"][0]["success"] is True
    assert client.get(f"/v1/runs/{run}/feedback").json() == {"thumb": "up"}


@pytest.mark.parametrize(
    ("shape", "named"),
    [("snake_case", False), ("kebab-case", False), ("a nested list", True), ("a bare event", True)],
)
def test_a_result_names_its_id_only_when_it_was_keyed_runid(
    client: httpx.Client, fake: FakeLunary, shape: str, named: bool
) -> None:
    key, run = fake.add_key(), fake.add_run()

    answer = ingest(client, key, FEEDBACK_SHAPES[shape](run))

    assert answer.json() == {
        "results": [{"id": run, "success": True} if named else {"success": True}]
    }


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_an_encoded_body_is_inflated_and_applied(
    client: httpx.Client, fake: FakeLunary, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    key, run = fake.add_key(), fake.add_run()
    plain = orjson.dumps({"events": [event("feedback", run, feedback={"thumb": "down"})]})

    answer = client.post(
        "/v1/runs/ingest",
        content=compress(plain),
        headers={**bearer(key), **JSON, "Content-Encoding": encoding},
    )

    assert answer.json() == {"results": [{"id": run, "success": True}]}
    assert client.get(f"/v1/runs/{run}/feedback").json() == {"thumb": "down"}


def test_ids_are_answered_as_sent_and_filed_as_lunary_maps_them(
    client: httpx.Client, fake: FakeLunary
) -> None:
    key = fake.add_key()

    first = ingest(client, key, {"events": [event("start", "my-run")]})
    again = ingest(client, key, {"events": [event("start", "my-run")]})

    assert first.json() == {"results": [{"id": "my-run", "success": True}]}
    assert seeded_uuid("my-run") == "b4dbeadf-1468-4183-ad0e-d4560af5dd92"  # proxy/core/runs.py's
    assert (
        client.get("/v1/runs/b4dbeadf-1468-4183-ad0e-d4560af5dd92", headers=bearer(key)).json()[
            "status"
        ]
        == "started"
    )
    assert again.status_code == 200
    assert again.json() == {
        "results": [
            {
                "id": "my-run",
                "success": False,
                "error": "Run with this ID already exists in the database.",
            }
        ]
    }


def test_ingest_refusals(client: httpx.Client, fake: FakeLunary) -> None:
    private, public, run = fake.add_key(), fake.add_key(private=False), fake.add_run()
    events = {"events": [event("feedback", run, feedback={"thumb": "up"})]}

    no_events = ingest(client, private, {"event": []})
    untyped = client.post("/v1/runs/ingest", content=orjson.dumps(events), headers=bearer(private))
    anonymous = client.post("/v1/runs/ingest", json=events)
    unknown = ingest(client, str(uuid.uuid4()), events)
    by_public = ingest(client, public, events)

    assert (no_events.status_code, no_events.json()) == (
        500,
        {"message": "Missing events payload."},
    )
    assert untyped.status_code == 500  # not JSON by its type: the body parser reads nothing
    assert (anonymous.status_code, anonymous.json()) == (
        402,
        {"message": "Incorrect project id format"},
    )
    assert (unknown.status_code, unknown.json()) == (401, {"message": "Invalid API key"})
    assert by_public.json() == {"results": [{"id": run, "success": True}]}


def test_the_legacy_report_route(client: httpx.Client, fake: FakeLunary) -> None:
    project, run = fake.add_key(private=False), fake.add_run()
    feedback = event("feedback", run, feedback={"thumb": "up"}, projectId=project)

    answer = client.post("/api/report", json={"events": [feedback]})
    empty = client.post("/api/report", json={"events": []})
    unnamed = client.post("/api/report", json={"events": [{"runId": run}]})

    assert answer.json() == [{"id": run, "success": True}]
    assert client.get(f"/v1/runs/{run}/feedback").json() == {"thumb": "up"}
    assert (empty.status_code, empty.json()) == (400, {"message": "Missing events payload."})
    assert unnamed.status_code == 402


# -- OTLP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/traces", "/v1/logs"])
def test_otlp_takes_protobuf_only_and_answers_an_empty_message(
    client: httpx.Client, fake: FakeLunary, route: str
) -> None:
    key = fake.add_key()
    export = traces([]) if route == "/v1/traces" else logs([])

    refused = client.post(route, json={}, headers=bearer(key))
    accepted = client.post(route, content=export, headers={**bearer(key), **PROTOBUF_HEADERS})

    assert (refused.status_code, refused.text) == (415, "Unsupported Content-Type")
    assert (accepted.status_code, accepted.content) == (200, b"")
    assert accepted.headers["content-type"] == "application/x-protobuf"


def test_spans_become_runs_after_the_answer(client: httpx.Client, fake: FakeLunary) -> None:
    fake.otlp_apply_delay = 0.3
    key, parent_id, span_id = fake.add_key(), b"\xa5" * 8, b"\x5a" * 8
    parent = fake.add_run(settled=False, run_id=seeded_uuid(parent_id.hex()))
    run = seeded_uuid(span_id.hex())  # 16 hex digits are hashed, as ingest hashes short ids

    answer = client.post(
        "/v1/traces",
        content=traces([span(span_id, parent=parent_id), span(parent_id)]),
        headers={**bearer(key), **PROTOBUF_HEADERS},
    )
    before = (run in fake.runs, fake.runs[parent]["status"])
    time.sleep(0.6)

    assert answer.status_code == 200
    assert before == (False, "started")  # Lunary writes them after answering
    shown = client.get(f"/v1/runs/{run}", headers=bearer(key)).json()
    assert (shown["status"], shown["endedAt"]) == ("success", "2025-11-24T16:00:01.000Z")
    assert shown["traceId"] == parent
    assert fake.runs[parent]["status"] == "success"


# -- deletes -------------------------------------------------------------------------------


def test_a_delete_with_an_api_key_answers_then_crashes_until_restart(
    client: httpx.Client, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()
    child = fake.add_run(parent=run)

    deleted = client.delete(f"/v1/runs/{run}", headers=bearer(key))
    with pytest.raises(httpx.TransportError):
        client.get(f"/v1/runs/{child}", headers=bearer(key))
    seen = len(fake.requests)
    fake.restart()
    after = client.get(f"/v1/runs/{child}", headers=bearer(key))

    assert (deleted.status_code, deleted.json()) == (200, {})
    assert seen == 1  # a crashed backend sees nothing
    assert (after.status_code, after.json()) == (404, {"message": "Run not found"})
    assert run not in fake.runs


def test_a_delete_with_a_session_survives_and_unknown_runs_are_not_found(
    client: httpx.Client, fake: FakeLunary
) -> None:
    session, run = fake.add_jwt(), fake.add_run()
    project = fake.project_of("org-a")

    unknown = client.delete(f"/v1/runs/{uuid.uuid4()}?projectId={project}", headers=bearer(session))
    deleted = client.delete(f"/v1/runs/{run}?projectId={project}", headers=bearer(session))
    bad = client.delete(f"/v1/runs/not-a-uuid?projectId={project}", headers=bearer(session))

    assert (unknown.status_code, unknown.json()) == (404, NOT_FOUND)
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert bad.status_code == 422
    assert not fake.crashed
    assert run not in fake.runs


# -- PATCH ---------------------------------------------------------------------------------


def test_patches_change_the_run(client: httpx.Client, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()

    def patch(suffix: str, body: object) -> httpx.Response:
        return client.patch(f"/v1/runs/{run}/{suffix}", json=body, headers=bearer(key))

    answers = [
        patch("tags", {"tags": ["a"]}),
        patch("feedback", {"thumb": "down", "ignored": 1}),
        patch("score", {"label": "x", "value": 1}),
        patch("visibility", {"visibility": True}),
    ]
    body = client.get(f"/v1/runs/{run}", headers=bearer(key)).json()

    assert [(a.status_code, a.json()) for a in answers] == [(200, {})] * 4
    assert (body["tags"], body["feedback"]) == (["a"], {"thumb": "down"})
    assert body["scores"] == [{"label": "x", "value": 1, "comment": None}]
    assert client.get(f"/v1/runs/{run}/public").json()["isPublic"] is True


def test_patch_refusals(client: httpx.Client, fake: FakeLunary) -> None:
    key, public, run = fake.add_key(), fake.add_key(private=False), fake.add_run()

    unknown = client.patch(f"/v1/runs/{uuid.uuid4()}/feedback", json={}, headers=bearer(key))
    by_public = client.patch(f"/v1/runs/{run}/feedback", json={}, headers=bearer(public))
    bad_score = client.patch(f"/v1/runs/{run}/score", json={"label": 5}, headers=bearer(key))
    bare_tags = client.patch(f"/v1/runs/{run}/tags", json=["a"], headers=bearer(key))

    assert unknown.status_code == 500
    assert (by_public.status_code, by_public.json()["error"]) == (403, "Forbidden")
    assert (bad_score.status_code, bad_score.json()) == (
        422,
        {
            "error": "Error",
            "message": 'Validation error: Expected string, received number at "label"; '
            'Required at "value"',
        },
    )
    assert bare_tags.status_code == 422
    assert fake.runs[run]["tags"] is None


# -- headers -------------------------------------------------------------------------------


def test_cors_headers_with_and_without_an_origin(client: httpx.Client, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()

    plain = client.get(f"/v1/runs/{run}", headers=bearer(key))
    echoed = client.get(f"/v1/runs/{run}", headers={**bearer(key), "Origin": "https://a.example"})

    assert plain.headers["access-control-allow-origin"] == ""
    assert plain.headers["access-control-allow-credentials"] == "true"
    assert plain.headers["vary"] == "Origin"
    assert echoed.headers["access-control-allow-origin"] == "https://a.example"


def test_the_rate_limit_counts_down_a_fixed_window(client: httpx.Client, fake: FakeLunary) -> None:
    fake.rate_limit = 3
    key, run = fake.add_key(), fake.add_run()

    answers = [client.get(f"/v1/runs/{run}", headers=bearer(key)) for _ in range(4)]
    refused = client.get(f"/v1/runs/{run}", headers=bearer(str(uuid.uuid4())))

    assert [a.headers["rate-limit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    assert limited.text == "Sometimes You Just Have to Slow Down."
    assert limited.headers["rate-limit-total"] == "3"
    assert limited.headers["rate-limit-reset"] == answers[0].headers["rate-limit-reset"]
    seconds_left = float(limited.headers["rate-limit-reset"]) - time.time()
    assert int(limited.headers["retry-after"]) == pytest.approx(seconds_left, abs=1.5)
    assert 55 <= int(limited.headers["retry-after"]) <= 60
    assert refused.status_code == 401
    assert not any(name.startswith("rate-limit") for name in refused.headers)


def test_a_204_has_no_content_type(client: httpx.Client, fake: FakeLunary) -> None:
    run = fake.add_run()

    answer = client.get(f"/v1/runs/{run}/feedback")

    assert answer.status_code == 204
    assert "content-type" not in answer.headers


# -- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "body"),
    [
        (lambda key: {"Authorization": key}, 404, NOT_FOUND),  # no scheme: no credential
        (lambda key: {"Authorization": f"Token {key}"}, 200, None),  # any scheme
        (lambda key: {"X-API-Key": key}, 200, None),
        (lambda key: {"X-API-Key": "garbage"}, 404, NOT_FOUND),
        (lambda key: {"Authorization": "Bearer garbage"}, 401, {"message": "Invalid access token"}),
        (lambda key: {}, 404, NOT_FOUND),
    ],
    ids=["no-scheme", "token-scheme", "x-api-key", "garbage-x-api-key", "garbage-bearer", "none"],
)
def test_credential_forms(
    client: httpx.Client,
    fake: FakeLunary,
    headers: Callable[[str], dict[str, str]],
    status: int,
    body: dict[str, str] | None,
) -> None:
    key, run = fake.add_key(), fake.add_run()

    answer = client.get(f"/v1/runs/{run}", headers=headers(key))

    assert answer.status_code == status
    assert answer.json() == (body or fake.shown(run))


def test_a_session_reads_org_wide_unlimited_and_a_forged_one_is_not_found(
    client: httpx.Client, fake: FakeLunary
) -> None:
    session, run, elsewhere = fake.add_jwt("org-a"), fake.add_run("org-a"), fake.add_run("org-b")
    header, payload, _ = session.split(".")

    read = client.get(f"/v1/runs/{run}", headers=bearer(session))
    stranger = client.get(f"/v1/runs/{elsewhere}", headers=bearer(session))
    forged = client.get(f"/v1/runs/{run}", headers=bearer(f"{header}.{payload}.AAAA"))

    assert read.json() == fake.shown(run)
    assert not any(name.startswith("rate-limit") for name in read.headers)
    assert stranger.status_code == 404
    assert (forged.status_code, forged.json()) == (404, NOT_FOUND)


def test_routes_ignore_case_and_a_trailing_slash(client: httpx.Client, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()

    answer = client.get(f"/V1/RUNS/{run.upper()}/", headers=bearer(key))

    assert answer.status_code == 200
    assert answer.json()["id"] == run  # canonical lower case


def test_a_test_may_still_edit_a_run_in_place(client: httpx.Client, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()
    fake.runs[run]["name"] = "renamed"

    body: dict[str, Any] = client.get(f"/v1/runs/{run}", headers=bearer(key)).json()

    assert body["name"] == "renamed"
    assert body == fake.shown(run)
