"""Background tasks: tracked while running, cancelled at shutdown after a grace period."""

from __future__ import annotations

import asyncio

import pytest

from proxy.cache.coalesce import SingleFlight
from proxy.ops.tasks import TaskSet


async def test_close_lets_quick_tasks_finish_and_cancels_slow_ones() -> None:
    tasks = TaskSet()
    quick = tasks.spawn(asyncio.sleep(0.05, result="done"), name="quick")
    slow = tasks.spawn(asyncio.sleep(60), name="slow")

    await tasks.close(grace=0.3)

    assert quick.result() == "done"
    assert slow.cancelled()
    assert len(tasks) == 0


async def test_a_closed_set_starts_nothing() -> None:
    tasks = TaskSet()
    await tasks.close()
    coro = asyncio.sleep(0)

    with pytest.raises(RuntimeError):
        tasks.spawn(coro, name="late")


async def test_single_flight_runs_one_task_per_key_and_forgets_it_when_done() -> None:
    flights: SingleFlight[str, int, str] = SingleFlight(TaskSet())
    started: list[str] = []

    async def work(name: str) -> int:
        started.append(name)
        await asyncio.sleep(0.05)
        return len(started)

    first, lead_a = flights.join("k", lambda: work("a"), "plan-a")
    second, lead_b = flights.join("k", lambda: work("b"), "plan-b")
    other, lead_c = flights.join("other", lambda: work("c"), "plan-c")
    peeked = flights.peek("k")
    results = await asyncio.gather(first, second, other)

    assert (lead_a, lead_b, lead_c) == (True, False, True)
    assert first is second
    assert peeked == (first, "plan-a")  # joiners see what the leader knew
    assert started == ["a", "c"]
    assert results[0] == results[1]
    assert not flights.running("k")
    assert len(flights) == 0
