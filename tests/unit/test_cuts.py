"""The fail-safe cuts: what an unreadable write leaves of each entry stored before it."""

from __future__ import annotations

from proxy.core.cuts import MAX_RECENT_CUTS, Cuts
from proxy.core.model import Entry, Freshness
from proxy.core.policy import judge

TTL = 2.0  # the active-run TTL
WRITE_AT = 1.8e9


def stored(at: float, fresh: float = 60.0, stale: float = 600.0) -> Entry:
    return Entry(200, "application/json", b"{}", '"e"', at, fresh, stale)


def cut_by(scope: str = "writer", at: float = WRITE_AT) -> Cuts:
    cuts = Cuts(active_ttl=TTL)
    cuts.cut(scope, at)
    return cuts


def freshness(cuts: Cuts, entry: Entry, scope: str, now: float) -> Freshness | None:
    """How the entry reads at `now` through the cuts: None when it is a miss."""
    cut = cuts.apply(entry, scope, now)
    return None if cut is None else judge(cut, now).freshness


def test_no_cut_leaves_every_entry_as_it_is() -> None:
    entry = stored(WRITE_AT - 10)
    assert Cuts(TTL).apply(entry, "anyone", WRITE_AT) is entry


def test_the_writers_entries_from_before_the_write_are_misses() -> None:
    assert cut_by("writer").apply(stored(WRITE_AT - 0.001), "writer", WRITE_AT) is None


def test_entries_stored_after_the_cut_are_untouched_in_every_scope() -> None:
    cuts = cut_by("writer")
    entry = stored(WRITE_AT + 0.001)
    assert cuts.apply(entry, "writer", WRITE_AT + 1) is entry
    assert cuts.apply(entry, "other", WRITE_AT + 1) is entry


def test_other_scopes_stay_fresh_at_most_the_active_run_ttl_after_the_cut_and_never_stale() -> None:
    cuts, entry = cut_by("writer"), stored(WRITE_AT - 30)

    assert freshness(cuts, entry, "other", WRITE_AT + TTL - 0.01) is Freshness.FRESH
    assert freshness(cuts, entry, "other", WRITE_AT + TTL + 0.01) in (None, Freshness.EXPIRED)
    assert freshness(cuts, entry, "other", WRITE_AT + 100) in (None, Freshness.EXPIRED)


def test_a_later_cut_never_revives_what_an_earlier_one_expired() -> None:
    """The bound counts from the first cut after the entry, not the newest."""
    cuts, entry = cut_by("writer", WRITE_AT), stored(WRITE_AT - 1)
    cuts.cut("someone", WRITE_AT + 30)

    for now in (WRITE_AT + 10, WRITE_AT + 31, WRITE_AT + 40):
        assert freshness(cuts, entry, "other", now) in (None, Freshness.EXPIRED), now


def test_an_entry_between_two_cuts_is_bounded_by_the_second() -> None:
    cuts = cut_by("writer", WRITE_AT)
    cuts.cut("someone", WRITE_AT + 30)
    between = stored(WRITE_AT + 10)

    assert freshness(cuts, between, "other", WRITE_AT + 31) is Freshness.FRESH
    assert freshness(cuts, between, "other", WRITE_AT + 32.5) in (None, Freshness.EXPIRED)


def test_a_cut_never_lengthens_an_entry() -> None:
    cut = cut_by().apply(stored(WRITE_AT - 30, fresh=1.0, stale=0.0), "other", WRITE_AT)
    assert cut is not None
    assert cut.fresh_for == 1.0


def test_an_entry_past_its_fresh_time_is_not_served_stale_after_a_cut() -> None:
    entry = stored(WRITE_AT - 120, fresh=60)
    assert freshness(cut_by(), entry, "other", WRITE_AT + 0.5) in (None, Freshness.EXPIRED)


def test_cuts_only_move_forward_for_a_scope() -> None:
    cuts = cut_by("writer")
    cuts.cut("writer", WRITE_AT - 50)
    assert cuts.apply(stored(WRITE_AT - 10), "writer", WRITE_AT) is None


def test_what_the_store_folded_has_expired() -> None:
    cuts = Cuts(TTL)
    cuts.expire_before(WRITE_AT)
    assert cuts.apply(stored(WRITE_AT - 1), "anyone", WRITE_AT + 5) is None
    entry = stored(WRITE_AT + 1)
    assert cuts.apply(entry, "anyone", WRITE_AT + 5) is entry


def test_a_writers_own_cut_is_forgotten_once_everyone_elses_bound_covers_it() -> None:
    cuts = cut_by("writer")
    assert freshness(cuts, stored(WRITE_AT - 1), "writer", WRITE_AT + TTL + 1) is None
    assert cuts._scopes == {}  # folded: nothing per scope is kept past the window


def test_a_flood_of_cuts_is_bounded_and_only_ever_expires_sooner() -> None:
    cuts = Cuts(TTL)
    for n in range(MAX_RECENT_CUTS + 1):
        cuts.cut(f"writer-{n}", WRITE_AT + n * 1e-5)

    assert len(cuts._recent) <= MAX_RECENT_CUTS
    assert len(cuts._scopes) <= MAX_RECENT_CUTS
    for n in (0, MAX_RECENT_CUTS):  # every writer's older entries are still misses
        assert cuts.apply(stored(WRITE_AT - 1), f"writer-{n}", WRITE_AT + 0.5) is None
