"""Every form of write Lunary accepts through the proxy drops exactly the runs it changed, in
every scope, with no cut: the three forms found stale against the real backend (D1 snake- and
kebab-case keys, D2 a nested list, D3 a gzip or deflate body), the legacy /api/report and
OTLP exports; and a write that changes runs it does not name cuts."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Callable

import orjson
import pytest

from tests.conftest import RunningProxy
from tests.e2e.test_invalidation import cached, metric, warm
from tests.fake_lunary import FakeLunary
from tests.otlp import PROTOBUF_HEADERS, TOOL_CALL, attribute, logs, span, span_run, traces

COMPRESS: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "deflate": zlib.compress}


def no_cut(proxy: RunningProxy) -> bool:
    return metric(proxy, "lunary_proxy_ingest_unparsed_total") == 0 and not any(
        metric(proxy, "lunary_proxy_cuts_total", reason=reason)
        for reason in ("encoded", "not_json", "not_protobuf", "unnamed_runs")
    )


def feedback(key: str, run: str) -> dict[str, object]:
    return {"type": "llm", "event": "feedback", key: run, "feedback": {"thumb": "up"}}


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("D1 snake_case", lambda run: {"events": [feedback("run_id", run)]}),
        ("D1 kebab-case", lambda run: {"events": [feedback("run-id", run)]}),
        ("D2 a nested list", lambda run: {"events": [[feedback("runId", run)]]}),
        ("a bare event", lambda run: {"events": feedback("runId", run)}),
    ],
)
def test_every_shape_lunary_reads_drops_its_run_in_every_scope(
    proxy: RunningProxy,
    fake: FakeLunary,
    name: str,
    body: Callable[[str], object],
) -> None:
    writer, colleague = fake.add_key(), fake.add_key()  # two credentials of one org
    run, bystander = fake.add_run(), fake.add_run()
    warm(proxy, run, [writer, colleague])
    warm(proxy, bystander, [writer])

    answer = proxy.client.post(
        "/v1/runs/ingest",
        content=orjson.dumps(body(run)),
        headers={"X-API-Key": writer, "Content-Type": "application/json"},
    )

    assert answer.status_code == 200, name
    assert cached(proxy, run, [writer, colleague]) == ["MISS"] * 4  # a cut leaves HITs
    assert cached(proxy, bystander, [writer]) == ["HIT", "HIT"]
    assert no_cut(proxy)


@pytest.mark.parametrize("encoding", sorted(COMPRESS))
def test_an_encoded_ingest_is_inflated_and_drops_exactly_its_runs(
    proxy: RunningProxy, fake: FakeLunary, encoding: str
) -> None:
    """D3: the proxy counted these unparsed and dropped nothing (then: cut everything)."""
    writer, colleague = fake.add_key(), fake.add_key()
    run, bystander = fake.add_run(), fake.add_run()
    warm(proxy, run, [writer, colleague])
    warm(proxy, bystander, [writer, colleague])
    plain = orjson.dumps({"events": [feedback("run_id", run)]})
    sent = COMPRESS[encoding](plain)

    answer = proxy.client.post(
        "/v1/runs/ingest",
        content=sent,
        headers={
            "X-API-Key": writer,
            "Content-Type": "application/json",
            "Content-Encoding": encoding,
        },
    )

    assert answer.status_code == 200
    assert fake.requests[-1].body == sent  # forwarded as sent
    assert cached(proxy, run, [writer, colleague]) == ["MISS"] * 4
    assert cached(proxy, bystander, [writer, colleague]) == ["HIT"] * 4
    assert no_cut(proxy)


def test_the_legacy_report_route_drops_its_runs_without_a_credential(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    public = fake.add_key(private=False)  # the project id an event names
    reader = fake.add_key()
    run, bystander = fake.add_run(), fake.add_run()
    warm(proxy, run, [reader])
    warm(proxy, bystander, [reader])
    event = {**feedback("runId", run), "projectId": public}

    answer = proxy.client.post("/api/report", json={"events": [event]})

    assert answer.status_code == 200
    assert answer.json() == [{"id": run, "success": True}]  # a bare array, as Lunary answers
    assert cached(proxy, run, [reader]) == ["MISS", "MISS"]
    assert cached(proxy, bystander, [reader]) == ["HIT", "HIT"]
    assert no_cut(proxy)


def test_an_otlp_export_drops_its_spans_runs_then_again_once_lunary_applied_it(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    """Lunary answers an OTLP export before it writes its runs: a read in between caches the
    run as it was, and the proxy's later drop replaces it."""
    key, colleague = fake.add_key(), fake.add_key()
    span_id, parent_id = b"\x5a" * 8, b"\xa5" * 8
    run, parent = fake.add_run(run_id=span_run(span_id)), fake.add_run(run_id=span_run(parent_id))
    bystander = fake.add_run()
    for cached_run in (run, parent, bystander):
        warm(proxy, cached_run, [key, colleague])

    answer = proxy.client.post(
        "/v1/traces",
        content=traces([span(span_id, parent=parent_id)]),
        headers={**PROTOBUF_HEADERS, "Authorization": f"Bearer {key}"},
    )
    at_once = cached(proxy, run, [key, colleague]) + cached(proxy, parent, [key, colleague])
    raced = cached(proxy, run, [key])  # cached again, as Lunary may not have written yet
    time.sleep(1.3)

    assert answer.status_code == 200
    assert at_once == ["MISS"] * 8
    assert raced == ["HIT", "HIT"]
    assert cached(proxy, run, [key]) == ["MISS", "MISS"]  # dropped again at 1 s
    assert cached(proxy, bystander, [key, colleague]) == ["HIT"] * 4
    assert no_cut(proxy)


def test_an_otlp_log_export_is_forwarded_and_drops_nothing(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    """Lunary's /v1/logs makes no runs (commit a86d698): nothing to drop, nothing to cut."""
    key, run = fake.add_key(), fake.add_run()
    warm(proxy, run, [key])
    export = logs([], resource=[attribute(TOOL_CALL, run)])

    answer = proxy.client.post(
        "/v1/logs", content=export, headers={**PROTOBUF_HEADERS, "X-API-Key": key}
    )

    assert answer.status_code == 200
    assert fake.requests[-1].body == export
    assert cached(proxy, run, [key]) == ["HIT", "HIT"]
    assert no_cut(proxy)


def test_an_otlp_export_lunary_refuses_changes_nothing(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()
    warm(proxy, run, [key])

    answer = proxy.client.post("/v1/traces", json={"resourceSpans": []}, headers={"X-API-Key": key})

    assert answer.status_code == 415  # Lunary reads OTLP as protobuf only
    assert cached(proxy, run, [key]) == ["HIT", "HIT"]
    assert no_cut(proxy)
