"""The bounded map of deadlines behind cooldowns, clear readings and refresh back-offs."""

from __future__ import annotations

from proxy.core.deadlines import Deadlines


def test_a_key_without_a_deadline_has_none() -> None:
    deadlines: Deadlines[str] = Deadlines(4)
    deadlines.set("a", 10.0, now=0.0)

    assert deadlines.until("a") == 10.0
    assert deadlines.until("b") == 0.0


def test_at_the_bound_expired_keys_go_and_running_ones_stay() -> None:
    deadlines: Deadlines[str] = Deadlines(3)
    deadlines.set("old", 1.0, now=0.0)
    deadlines.set("running", 10.0, now=0.0)
    deadlines.set("also", 10.0, now=0.0)

    deadlines.set("new", 10.0, now=5.0)

    assert deadlines.until("old") == 0.0
    assert [deadlines.until(k) for k in ("running", "also", "new")] == [10.0, 10.0, 10.0]


def test_a_flood_of_running_keys_is_forgotten_whole() -> None:
    deadlines: Deadlines[int] = Deadlines(3, flood_at=2)
    for key in range(3):
        deadlines.set(key, 10.0, now=0.0)

    deadlines.set(99, 10.0, now=1.0)

    assert [deadlines.until(k) for k in range(3)] == [0.0, 0.0, 0.0]
    assert deadlines.until(99) == 10.0
