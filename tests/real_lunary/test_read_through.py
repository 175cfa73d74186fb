"""Reads through two replicas before the real backend: stored once, answered as Lunary does."""

from __future__ import annotations

import time

import pytest

from tests.real_lunary.conftest import NEGATIVE_TTL
from tests.real_lunary.events import Run
from tests.real_lunary.tier import Tier, assert_same_answer, describe

pytestmark = pytest.mark.real_lunary


def test_an_ingested_run_is_a_miss_then_the_same_bytes_from_the_store_on_every_replica(
    tier: Tier,
) -> None:
    run = Run.fresh()
    tier.create(run, via=tier.two)

    cached = tier.cache(run)

    assert cached[run.path].json()["output"] == "before"
    assert [row["id"] for row in cached[f"{run.path}/related"].json()] == [run.id]
    for path, answer in cached.items():
        other = tier.two.get(path, headers=tier.reader)
        assert other.headers.get("x-cache") == "HIT", describe(other)
        assert_same_answer(other, answer)


def test_an_unknown_run_is_lunarys_own_404_kept_for_the_negative_ttl_only(tier: Tier) -> None:
    path = Run.fresh().path
    lunary = tier.lunary.get(path, headers=tier.reader)
    assert lunary.status_code == 404, describe(lunary)

    miss = tier.one.get(path, headers=tier.reader)
    kept_from = time.monotonic()
    hits = [tier.one.get(path, headers=tier.reader), tier.two.get(path, headers=tier.reader)]
    kept_for = time.monotonic() - kept_from

    assert miss.headers.get("x-cache") == "MISS", describe(miss)
    assert_same_answer(miss, lunary)
    assert kept_for < NEGATIVE_TTL, "too slow to see the 404 kept: the checks below mean nothing"
    for hit in hits:
        assert hit.headers.get("x-cache") == "HIT", describe(hit)
        assert_same_answer(hit, lunary)
    time.sleep(max(0.0, NEGATIVE_TTL + 0.5 - (time.monotonic() - kept_from)))
    expired = tier.one.get(path, headers=tier.reader)
    assert expired.headers.get("x-cache") == "MISS", describe(expired)
    assert_same_answer(expired, lunary)


def test_a_run_ingested_after_its_404_was_kept_is_read_at_once_through_the_other_replica(
    tier: Tier,
) -> None:
    run = Run.fresh()
    tier.one.get(run.path, headers=tier.reader)
    kept = tier.one.get(run.path, headers=tier.reader)
    assert (kept.status_code, kept.headers.get("x-cache")) == (404, "HIT"), describe(kept)

    tier.create(run, via=tier.two)

    created = tier.one.get(run.path, headers=tier.reader)
    assert created.headers.get("x-cache") == "MISS", describe(created)
    assert_same_answer(created, tier.lunary.get(run.path, headers=tier.reader))
    assert created.json()["id"] == run.id
