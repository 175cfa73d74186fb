"""The later drops of writes Lunary applies after answering: one worker, rounds merged, a bound
on what may wait, and nothing left behind at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

import pytest

from proxy.cache.later_drops import LaterDrops


class Drops:
    """Records each drop the scheduler makes: when, and of which runs."""

    def __init__(self) -> None:
        self.made: list[set[str]] = []

    async def __call__(self, run_ids: Collection[str]) -> None:
        self.made.append(set(run_ids))


async def test_exports_close_together_share_their_rounds() -> None:
    drops = Drops()
    later = LaterDrops(drops, after=(0.3, 0.6))

    assert later.schedule({"a", "b"})
    assert later.schedule({"b", "c"})
    waiting = later.pending
    await asyncio.sleep(1.5)
    await later.close()

    assert waiting <= 3  # "b" waits once per round, whoever asked
    assert drops.made in ([{"a", "b", "c"}] * 2, [{"a", "b"}, {"b", "c"}] * 2)
    assert later.pending == 0


async def test_past_the_bound_nothing_is_scheduled_and_the_caller_is_told() -> None:
    later = LaterDrops(Drops(), after=(10.0,), max_pending=3)

    assert later.schedule({"a", "b"})
    assert not later.schedule({"c", "d"})
    assert later.pending == 2
    await later.close()
    assert not later.schedule({"e"})  # closed: the caller fails safe


async def test_close_stops_at_once_and_drops_nothing_more() -> None:
    drops = Drops()
    later = LaterDrops(drops, after=(0.2,))
    later.schedule({"a"})

    await asyncio.wait_for(later.close(), 0.1)
    await asyncio.sleep(0.5)

    assert drops.made == []


async def test_a_drop_that_raises_is_logged_and_the_rounds_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[set[str]] = []

    async def flaky(run_ids: Collection[str]) -> None:
        made.append(set(run_ids))
        if len(made) == 1:
            raise RuntimeError("a bug")

    later = LaterDrops(flaky, after=(0.1, 0.2))
    with caplog.at_level(logging.ERROR, logger="proxy.cache.invalidation"):
        later.schedule({"a"})
        await asyncio.sleep(0.8)
    await later.close()

    assert made == [{"a"}, {"a"}]
    assert [r.getMessage() for r in caplog.records] == ["a later drop of runs failed"]
