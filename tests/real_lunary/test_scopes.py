"""Other credentials get what Lunary answers them, never the body cached for project A1's key.

Lunary reads `GET /v1/runs/{id}` org-wide and `/related` project-wide: project A2's key reads
an A1 run (the same run, fetched under its own scope) and gets `[]` for its related runs; org B
gets 404 and `[]`; a public key gets 401.
"""

from __future__ import annotations

import pytest

from tests.real_lunary.events import Run
from tests.real_lunary.tier import Backend, Tier, assert_same_answer, bearer, describe

pytestmark = pytest.mark.real_lunary


def private_keys(backend: Backend) -> dict[str, str]:
    return {"org B": backend.private_key_b, "project A2": backend.private_key_a2}


@pytest.mark.parametrize("who", ["org B", "project A2"])
def test_another_projects_key_gets_lunarys_answer_for_it_not_the_cached_one(
    tier: Tier, who: str
) -> None:
    run = Run.fresh()
    tier.create(run, via=tier.one)
    cached = tier.cache(run)
    headers = bearer(private_keys(tier.backend)[who])

    for path in run.paths:
        proxy = tier.one.get(path, headers=headers)
        assert proxy.headers.get("x-cache") == "MISS", describe(proxy)
        assert_same_answer(proxy, tier.lunary.get(path, headers=headers))
    related = tier.one.get(f"{run.path}/related", headers=headers)
    assert related.json() == [] != cached[f"{run.path}/related"].json()


def test_an_org_b_key_gets_lunarys_404_on_every_replica(tier: Tier) -> None:
    run = Run.fresh()
    tier.create(run, via=tier.one)
    tier.cache(run)
    headers = bearer(tier.backend.private_key_b)
    lunary = tier.lunary.get(run.path, headers=headers)
    assert lunary.status_code == 404, describe(lunary)

    for replica in (tier.one, tier.two, tier.one):
        assert_same_answer(replica.get(run.path, headers=headers), lunary)


def test_a_public_key_gets_lunarys_refusal_every_time(tier: Tier) -> None:
    run = Run.fresh()
    tier.create(run, via=tier.one)
    tier.cache(run)
    for path in run.paths:
        lunary = tier.lunary.get(path, headers=tier.ingester)
        assert lunary.status_code == 401, describe(lunary)
        for replica in (tier.one, tier.two):
            refused = replica.get(path, headers=tier.ingester)
            assert refused.headers.get("x-cache") == "MISS", describe(refused)
            assert_same_answer(refused, lunary)
