"""Cached reads over real HTTP: misses fill from the fake Lunary, repeats come from the store."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary
from tests.servers import ServerThread

# README: after a background refresh failed, "that key's stale entry is served for 2 s without
# another refresh" (proxy.cache.reads.REFRESH_RETRY_AFTER)
REFRESH_BACKOFF = 2.0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_repeat_read_is_a_hit_with_identical_body(proxy: RunningProxy, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()

    first = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    second = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert first.headers["cache-status"] == "lunary-cache-proxy; fwd=miss; fwd-status=200; stored"
    assert second.headers["x-cache"] == "HIT"
    assert second.headers["cache-status"].startswith("lunary-cache-proxy; hit; ttl=")
    assert int(second.headers["age"]) >= 0
    assert second.content == first.content
    assert orjson.loads(second.content)["id"] == run
    assert second.headers["content-type"] == "application/json; charset=utf-8"
    assert second.headers["etag"] == first.headers["etag"]
    assert fake.count(run) == 1


def test_related_route_is_cached_separately(proxy: RunningProxy, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()
    child = fake.add_run(parent=run)

    related = [proxy.get(f"/v1/runs/{run}/related", headers=bearer(key)) for _ in range(2)]
    single = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert [r.headers["x-cache"] for r in related] == ["MISS", "HIT"]
    assert [row["id"] for row in orjson.loads(related[1].content)] == [run, child]
    assert single.headers["x-cache"] == "MISS"
    assert fake.count(f"{run}/related") == 1


@pytest.mark.parametrize(
    "spelling",
    [
        lambda u: u.upper(),
        lambda u: "{" + u + "}",
        lambda u: u.replace("-", ""),
        lambda u: "%7B" + u + "%7D",
        lambda u: "-".join(u.replace("-", "")[i : i + 4] for i in range(0, 32, 4)),
    ],
    ids=["upper", "braces", "no-hyphens", "encoded-braces", "hyphen-every-four"],
)
def test_every_uuid_spelling_shares_one_entry(
    proxy: RunningProxy, fake: FakeLunary, spelling: object
) -> None:
    key, run = fake.add_key(), fake.add_run()
    proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    other = proxy.get(f"/v1/runs/{spelling(run)}", headers=bearer(key))  # type: ignore[operator]

    assert other.headers["x-cache"] == "HIT"
    assert fake.count() == 1


def test_head_is_answered_from_the_get_entry_without_body(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()

    head_miss = proxy.client.head(f"/v1/runs/{run}", headers=bearer(key))
    get_hit = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    head_hit = proxy.client.head(f"/v1/runs/{run}", headers=bearer(key))

    assert head_miss.headers["x-cache"] == "MISS"
    assert head_miss.content == b""
    assert [seen.method for seen in fake.requests] == ["GET"]
    assert get_hit.headers["x-cache"] == "HIT"
    assert head_hit.headers["x-cache"] == "HIT"
    assert head_hit.content == b""
    assert int(head_hit.headers["content-length"]) == len(get_hit.content)


def test_hit_does_not_replay_per_request_upstream_headers(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()
    headers = {**bearer(key), "Origin": "https://app.example"}

    miss = proxy.get(f"/v1/runs/{run}", headers=headers)
    hit = proxy.get(f"/v1/runs/{run}", headers=headers)

    assert "rate-limit-remaining" in miss.headers
    for name in ("rate-limit-remaining", "rate-limit-reset", "access-control-allow-origin"):
        assert name not in hit.headers
    assert hit.headers["content-type"] == miss.headers["content-type"]


def test_query_parameters_in_any_order_share_an_entry(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()

    a = proxy.get(f"/v1/runs/{run}?projectId=p1&x=1", headers=bearer(key))
    b = proxy.get(f"/v1/runs/{run}?x=1&projectId=p1", headers=bearer(key))
    c = proxy.get(f"/v1/runs/{run}?projectId=p2", headers=bearer(key))
    plain = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert [r.headers["x-cache"] for r in (a, b, c, plain)] == ["MISS", "HIT", "MISS", "MISS"]
    assert fake.requests[0].query_string == b"projectId=p1&x=1"


def test_non_uuid_segments_pass_through_uncached(proxy: RunningProxy, fake: FakeLunary) -> None:
    key = fake.add_key()
    fake.add_run()

    counts = [proxy.get("/v1/runs/count", headers=bearer(key)) for _ in range(2)]
    bad = [proxy.get("/v1/runs/not-a-uuid", headers=bearer(key)) for _ in range(2)]

    assert [r.json() for r in counts] == [1, 1]
    assert all("x-cache" not in r.headers for r in counts + bad)
    assert [r.status_code for r in bad] == [500, 500]
    assert fake.count("/v1/runs/count") == 2
    assert fake.count("not-a-uuid") == 2


def test_not_found_is_cached_briefly_per_scope(make_proxy: ProxyFactory, fake: FakeLunary) -> None:
    proxy = make_proxy(negative_ttl=0.5)
    key, missing = fake.add_key(), "6f1c7a52-1f0e-4c52-9d9b-6f3b1e1f0a11"

    first = proxy.get(f"/v1/runs/{missing}", headers=bearer(key))
    second = proxy.get(f"/v1/runs/{missing}", headers=bearer(key))
    time.sleep(0.6)
    third = proxy.get(f"/v1/runs/{missing}", headers=bearer(key))

    assert [r.status_code for r in (first, second, third)] == [404, 404, 404]
    assert second.headers["x-cache"] == "HIT"
    assert "detail=negative" in second.headers["cache-status"]
    assert second.json() == {"message": "Run not found"}
    assert "etag" not in second.headers
    assert third.headers["x-cache"] == "MISS"
    assert fake.count(missing) == 2


def test_unsettled_run_is_fresh_only_for_the_active_ttl(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(active_run_ttl=0.4, cache_ttl=60)
    key, running, done = fake.add_key(), fake.add_run(settled=False), fake.add_run()
    thread = fake.add_run(run_type="thread")

    for run in (running, done, thread):
        proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    time.sleep(0.5)
    again = {
        run: proxy.get(f"/v1/runs/{run}", headers=bearer(key)) for run in (running, done, thread)
    }

    assert again[done].headers["x-cache"] == "HIT"
    assert again[running].headers["x-cache"] != "HIT"
    assert again[thread].headers["x-cache"] != "HIT"


def test_empty_related_array_is_fresh_only_for_the_active_ttl(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(active_run_ttl=0.3, cache_ttl=60, stale_ttl=0)
    key, unknown = fake.add_key(), "0b8f4a3c-0f5e-4e8b-a1d2-7c9e6b5a4d3f"

    first = proxy.get(f"/v1/runs/{unknown}/related", headers=bearer(key))
    soon = proxy.get(f"/v1/runs/{unknown}/related", headers=bearer(key))
    time.sleep(0.4)
    later = proxy.get(f"/v1/runs/{unknown}/related", headers=bearer(key))

    assert first.json() == []
    assert soon.headers["x-cache"] == "HIT"
    assert later.headers["x-cache"] == "MISS"


def test_etag_on_miss_and_hit_and_if_none_match_gives_304(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()

    miss = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    etag = miss.headers["etag"]
    revalidated = proxy.get(f"/v1/runs/{run}", headers={**bearer(key), "If-None-Match": etag})
    weak = proxy.get(f"/v1/runs/{run}", headers={**bearer(key), "If-None-Match": f"W/{etag}"})
    other = proxy.get(f"/v1/runs/{run}", headers={**bearer(key), "If-None-Match": '"nope"'})

    assert etag.startswith('"')
    assert etag.endswith('"')
    assert revalidated.status_code == 304
    assert revalidated.content == b""
    assert revalidated.headers["etag"] == etag
    assert weak.status_code == 304
    assert other.status_code == 200
    assert other.content == miss.content
    # the conditional headers are the proxy's to answer: the upstream never saw one
    assert all(seen.header(b"if-none-match") is None for seen in fake.requests)


def test_if_none_match_on_a_miss_gives_304(proxy: RunningProxy, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()
    etag = proxy.get(f"/v1/runs/{run}", headers=bearer(key)).headers["etag"]

    refreshed = proxy.get(
        f"/v1/runs/{run}",
        headers={**bearer(key), "If-None-Match": etag, "Cache-Control": "no-cache"},
    )

    assert refreshed.status_code == 304
    assert refreshed.headers["x-cache"] == "MISS"


def test_304_has_no_content_length_and_repeated_if_none_match_counts(
    proxy: RunningProxy, fake: FakeLunary
) -> None:
    key, run = fake.add_key(), fake.add_run()
    etag = proxy.get(f"/v1/runs/{run}", headers={"X-API-Key": key}).headers["etag"]

    repeated = proxy.get(
        f"/v1/runs/{run}",
        headers=[("X-API-Key", key), ("If-None-Match", '"zz"'), ("If-None-Match", etag)],
    )

    assert repeated.status_code == 304
    assert "content-length" not in repeated.headers


def test_every_answer_has_exactly_one_date_header(proxy: RunningProxy, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()

    miss = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    hit = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    passed = proxy.get("/v1/template_versions/latest")

    for response in (miss, hit, passed):
        assert len(response.headers.get_list("date")) == 1


def test_client_no_cache_refreshes_and_stores(proxy: RunningProxy, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()
    proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    fake.runs[run]["name"] = "renamed"

    refreshed = proxy.get(f"/v1/runs/{run}", headers={**bearer(key), "Cache-Control": "no-cache"})
    max_age_zero = proxy.get(
        f"/v1/runs/{run}", headers={**bearer(key), "Cache-Control": "max-age=0"}
    )
    after = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert refreshed.headers["x-cache"] == "MISS"
    assert "fwd=request" in refreshed.headers["cache-status"]
    assert refreshed.json()["name"] == "renamed"
    assert max_age_zero.headers["x-cache"] == "MISS"
    assert after.headers["x-cache"] == "HIT"
    assert after.json()["name"] == "renamed"
    assert fake.count(run) == 3


def test_client_no_store_bypasses_reads_and_writes(proxy: RunningProxy, fake: FakeLunary) -> None:
    key, run = fake.add_key(), fake.add_run()
    proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    other_run = fake.add_run()

    bypassed = proxy.get(f"/v1/runs/{run}", headers={**bearer(key), "Cache-Control": "no-store"})
    not_written = proxy.get(
        f"/v1/runs/{other_run}", headers={**bearer(key), "Cache-Control": "no-store"}
    )
    later = proxy.get(f"/v1/runs/{other_run}", headers=bearer(key))

    assert bypassed.headers["x-cache"] == "BYPASS"
    assert "detail=client-no-store" in bypassed.headers["cache-status"]
    assert not_written.headers["x-cache"] == "BYPASS"
    assert later.headers["x-cache"] == "MISS"
    assert fake.count(run) == 2


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda f: setattr(f, "fail_status", 500), "status"),
        (lambda f: setattr(f, "fail_status", 503), "status"),
        (lambda f: f.extra_headers.update({"Set-Cookie": "s=1"}), "set-cookie"),
        (lambda f: f.extra_headers.update({"Cache-Control": "no-store"}), "upstream-no-store"),
    ],
    ids=["500", "503", "set-cookie", "no-store"],
)
def test_unstorable_answers_are_passed_on_but_not_stored(
    proxy: RunningProxy, fake: FakeLunary, setup: object, reason: str
) -> None:
    key, run = fake.add_key(), fake.add_run()
    setup(fake)  # type: ignore[operator]

    answers = [proxy.get(f"/v1/runs/{run}", headers=bearer(key)) for _ in range(2)]

    assert [r.headers["x-cache"] for r in answers] == ["MISS", "MISS"]
    assert f"detail={reason}" in answers[1].headers["cache-status"]
    assert fake.count(run) == 2


def test_auth_failures_are_not_stored(proxy: RunningProxy, fake: FakeLunary) -> None:
    public = fake.add_key(private=False)
    run = fake.add_run()

    unauthorized = [proxy.get(f"/v1/runs/{run}", headers=bearer(public)) for _ in range(2)]
    garbage = [proxy.get(f"/v1/runs/{run}", headers=bearer("not-a-key")) for _ in range(2)]

    assert [r.status_code for r in unauthorized + garbage] == [401, 401, 401, 401]
    assert unauthorized[1].json() == {"message": "This route requires a private API key"}
    assert garbage[1].json() == {"message": "Invalid access token"}
    assert all(r.headers["x-cache"] == "MISS" for r in unauthorized + garbage)
    assert fake.count(run) == 4


def test_upstream_429_is_relayed_and_not_stored(proxy: RunningProxy, fake: FakeLunary) -> None:
    run = fake.add_run()
    fake.rate_limit = 0

    limited = proxy.get(f"/v1/runs/{run}", headers=bearer(fake.add_key()))

    assert limited.status_code == 429
    assert limited.text == "Sometimes You Just Have to Slow Down."
    assert 55 <= int(limited.headers["retry-after"]) <= 60  # what is left of Lunary's window
    assert limited.headers["x-cache"] == "MISS"
    assert "detail=status" in limited.headers["cache-status"]


def test_upstream_max_age_bounds_fresh_time(make_proxy: ProxyFactory, fake: FakeLunary) -> None:
    proxy = make_proxy(cache_ttl=60, stale_ttl=0)
    key, run = fake.add_key(), fake.add_run()
    fake.extra_headers["Cache-Control"] = "private, max-age=0"

    answers = [proxy.get(f"/v1/runs/{run}", headers=bearer(key)) for _ in range(2)]

    assert "detail=zero-ttl" in answers[0].headers["cache-status"]
    assert fake.count(run) == 2


def test_body_over_the_entry_limit_is_passed_on_whole_but_not_stored(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(max_entry_bytes=4096)
    key, run = fake.add_key(), fake.add_run(size=200_000)

    answers = [proxy.get(f"/v1/runs/{run}", headers=bearer(key)) for _ in range(2)]

    assert [r.status_code for r in answers] == [200, 200]
    assert orjson.loads(answers[1].content)["output"][0]["content"] == "x" * 200_000
    assert "detail=too-large" in answers[1].headers["cache-status"]
    assert fake.count(run) == 2


def test_invalid_json_is_passed_on_but_not_stored(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    key, run = fake.add_key(), fake.add_run()
    fake.body_override = b'{"id": "truncated'

    answers = [proxy.get(f"/v1/runs/{run}", headers=bearer(key)) for _ in range(2)]

    assert [r.status_code for r in answers] == [200, 200]
    assert answers[1].content == b'{"id": "truncated'
    assert "detail=invalid-json" in answers[1].headers["cache-status"]
    assert fake.count(run) == 2


def test_stale_entry_survives_a_failing_background_refresh(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(cache_ttl=0.2, stale_ttl=30)
    key, run = fake.add_key(), fake.add_run()
    fresh = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    time.sleep(0.3)
    fake.fail_status = 503

    stale = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    deadline = time.monotonic() + 3  # until the background refresh has met its 503
    while fake.count(run) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    still_stale = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert stale.status_code == still_stale.status_code == 200
    assert stale.headers["x-cache"] == still_stale.headers["x-cache"] == "STALE"
    assert "fwd=stale" in stale.headers["cache-status"]
    assert "detail=revalidating" in stale.headers["cache-status"]
    assert stale.content == still_stale.content == fresh.content
    assert int(stale.headers["age"]) >= 0
    assert fake.count(run) >= 2


def test_a_failed_refresh_is_not_retried_by_every_read_during_an_outage(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(cache_ttl=0.2, stale_ttl=30)
    key, run = fake.add_key(), fake.add_run()
    proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    time.sleep(0.3)
    fake.fail_status = 503

    # a read every 0.15 s, each finding the last refresh done, for nearly the whole back-off
    # (it starts when the refresh that the first stale read began fails): a shorter back-off
    # would let one of the later reads refresh again
    first_stale = time.monotonic()
    answers = [proxy.get(f"/v1/runs/{run}", headers=bearer(key))]
    while True:
        time.sleep(0.15)
        if time.monotonic() >= first_stale + REFRESH_BACKOFF - 0.3:
            break
        answers.append(proxy.get(f"/v1/runs/{run}", headers=bearer(key)))
    during = fake.count(run)
    time.sleep(max(0.0, first_stale + REFRESH_BACKOFF + 0.2 - time.monotonic()))
    fake.fail_status = None
    proxy.get(f"/v1/runs/{run}", headers=bearer(key))  # stale still; refreshes, and succeeds
    deadline = time.monotonic() + 3
    while proxy.get(f"/v1/runs/{run}", headers=bearer(key)).headers["x-cache"] != "HIT":
        assert time.monotonic() < deadline, "the refresh never ran again"
        time.sleep(0.05)

    assert len(answers) >= 6
    assert [a.headers["x-cache"] for a in answers] == ["STALE"] * len(answers)
    assert during == 2  # the fill, then one failed refresh: not one per read
    assert fake.count(run) == 3


@pytest.mark.parametrize(
    ("failure", "detail"),
    [("connect", "refused"), ("timeout", "read_timeout"), ("500", "upstream-error")],
)
def test_client_no_cache_gets_stale_when_upstream_fails_and_entry_survives(
    make_proxy: ProxyFactory, fake: FakeLunary, upstream: ServerThread, failure: str, detail: str
) -> None:
    proxy = make_proxy(cache_ttl=60, stale_ttl=30, upstream_timeout=0.5)
    key, run = fake.add_key(), fake.add_run()
    good = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    if failure == "timeout":
        fake.latency = 1.5
    elif failure == "500":
        fake.fail_status = 500
    else:
        upstream.__exit__()  # nothing listens any more: connection refused

    refreshed = proxy.get(f"/v1/runs/{run}", headers={**bearer(key), "Cache-Control": "no-cache"})
    fake.latency, fake.fail_status = 0.0, None
    after = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert refreshed.status_code == 200
    assert refreshed.headers["x-cache"] == "STALE"
    # the failure's cause, or an error status the upstream answered
    assert refreshed.headers["cache-status"].endswith(f"; detail={detail}")
    assert refreshed.content == good.content
    # a failed refresh never overwrites a good entry
    assert after.headers["x-cache"] == "HIT"
    assert after.content == good.content


def test_a_trickling_upstream_is_bounded_by_the_upstream_timeout(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(upstream_timeout=0.5)
    key, run = fake.add_key(), fake.add_run()
    fake.trickle_delay = 0.2  # each of the 10 pieces arrives well within a read timeout

    started = time.monotonic()
    answer = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert answer.status_code == 504
    assert time.monotonic() - started < 1.5


def test_stale_entry_is_answered_at_once_and_refreshed_in_the_background(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(cache_ttl=1, stale_ttl=30)
    key, run = fake.add_key(), fake.add_run()
    proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    time.sleep(1.1)
    fake.runs[run]["name"] = "renamed"

    stale = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    deadline = time.monotonic() + 3  # the refresh lands in the background: give a busy box time
    refreshed = proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    while refreshed.headers["x-cache"] != "HIT" and time.monotonic() < deadline:
        time.sleep(0.05)
        refreshed = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert stale.headers["x-cache"] == "STALE"
    assert stale.json()["name"] == "gpt-4o"
    assert refreshed.headers["x-cache"] == "HIT"
    assert refreshed.json()["name"] == "renamed"
    assert fake.count(run) == 2


def test_expired_entry_past_the_stale_window_is_refetched(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy(cache_ttl=0.2, stale_ttl=0.1)
    key, run = fake.add_key(), fake.add_run()
    proxy.get(f"/v1/runs/{run}", headers=bearer(key))
    time.sleep(0.4)
    fake.runs[run]["name"] = "renamed"

    refreshed = proxy.get(f"/v1/runs/{run}", headers=bearer(key))

    assert refreshed.headers["x-cache"] == "MISS"
    assert refreshed.json()["name"] == "renamed"
