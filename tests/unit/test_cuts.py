"""The fail-safe cuts: what an unreadable write leaves of each entry stored before it."""

from __future__ import annotations

from proxy.cuts import EVERYONE_MISS, MAX_SCOPE_CUTS, Cuts
from proxy.model import Entry, Freshness
from proxy.policy import judge

ACTIVE_TTL = 2.0
WRITE_AT = 1.8e9


def stored(at: float, fresh: float = 60.0, stale: float = 600.0) -> Entry:
    return Entry(200, "application/json", b"{}", '"e"', at, fresh, stale)


def cut_by(scope: str = "writer") -> Cuts:
    cuts = Cuts(active_ttl=ACTIVE_TTL, keep_for=700.0)
    cuts.cut(scope, WRITE_AT)
    return cuts


def test_no_cut_leaves_every_entry_as_it_is() -> None:
    entry = stored(WRITE_AT - 10)
    assert Cuts(ACTIVE_TTL, 700.0).apply(entry, "anyone") is entry


def test_the_writers_entries_from_before_the_write_are_misses() -> None:
    assert cut_by("writer").apply(stored(WRITE_AT - 0.001), "writer") is None


def test_entries_stored_after_the_cut_are_untouched_in_every_scope() -> None:
    cuts = cut_by("writer")
    entry = stored(WRITE_AT + 0.001)
    assert cuts.apply(entry, "writer") is entry
    assert cuts.apply(entry, "other") is entry


def test_other_scopes_stay_fresh_at_most_the_active_run_ttl_after_the_cut_and_never_stale() -> None:
    cut = cut_by("writer").apply(stored(WRITE_AT - 30), "other")

    assert cut is not None
    assert judge(cut, WRITE_AT + ACTIVE_TTL - 0.01).freshness is Freshness.FRESH
    assert judge(cut, WRITE_AT + ACTIVE_TTL + 0.01).freshness is Freshness.EXPIRED


def test_a_cut_never_lengthens_an_entry() -> None:
    entry = stored(WRITE_AT - 30, fresh=1.0, stale=0.0)
    cut = cut_by().apply(entry, "other")
    assert cut is not None
    assert cut.fresh_for == 1.0


def test_an_entry_already_past_its_fresh_time_is_not_served_stale_after_a_cut() -> None:
    cut = cut_by().apply(stored(WRITE_AT - 120, fresh=60), "other")
    assert cut is not None
    assert judge(cut, WRITE_AT + 0.5).freshness is Freshness.EXPIRED


def test_an_announced_cut_is_learned_like_one_made_here() -> None:
    cuts = Cuts(ACTIVE_TTL, 700.0)
    cuts.learn("writer", WRITE_AT)
    assert cuts.apply(stored(WRITE_AT - 1), "writer") is None
    assert cuts.apply(stored(WRITE_AT - 1), "other") is not None


def test_cuts_only_move_forward() -> None:
    cuts = cut_by("writer")
    cuts.learn("writer", WRITE_AT - 50)
    assert cuts.apply(stored(WRITE_AT - 10), "writer") is None


def test_the_everyone_miss_cut_makes_every_older_entry_a_miss() -> None:
    cuts = Cuts(ACTIVE_TTL, 700.0)
    cuts.learn(EVERYONE_MISS, WRITE_AT)
    assert cuts.apply(stored(WRITE_AT - 1), "anyone") is None
    assert cuts.apply(stored(WRITE_AT + 1), "anyone") is not None


def test_a_flood_of_writers_still_in_force_makes_everything_older_a_miss() -> None:
    cuts = Cuts(ACTIVE_TTL, keep_for=700.0)
    for n in range(MAX_SCOPE_CUTS):
        cuts.cut(f"writer-{n}", WRITE_AT + n * 1e-6)
    cuts.cut("one-more", WRITE_AT + 1)

    assert len(cuts._scopes) <= 1
    assert cuts.apply(stored(WRITE_AT - 1), "writer-0") is None
    assert cuts.apply(stored(WRITE_AT - 1), "anyone") is None
    assert cuts.apply(stored(WRITE_AT + 0.5), "one-more") is None
    assert cuts.apply(stored(WRITE_AT + 2), "anyone") is not None


def test_cuts_older_than_any_entry_are_forgotten_first() -> None:
    keep_for = 700.0
    cuts = Cuts(ACTIVE_TTL, keep_for)
    old = WRITE_AT - 2 * keep_for
    for n in range(MAX_SCOPE_CUTS):
        cuts.cut(f"writer-{n}", old + n * 1e-6)
    cuts.cut("one-more", WRITE_AT)

    assert list(cuts._scopes) == ["one-more"]
    # no entry stored before the forgotten cuts is still alive; newer ones are not misses
    assert cuts.apply(stored(old + 1), "writer-0") is not None
    assert cuts.apply(stored(WRITE_AT - 1), "one-more") is None
