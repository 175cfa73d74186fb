"""Single-flight within the process: concurrent misses for one key share one fetch.

The fetch runs as a task of its own, not inside the leader's request, so it finishes (and its
result is stored) even when the leader's client goes away or every waiter gives up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from proxy.ops.tasks import TaskSet

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
P = TypeVar("P")


class SingleFlight(Generic[K, T, P]):
    """At most one running task per key; later callers join it.

    Each flight carries the leader's `P` (what it knew when it started), so a request that finds
    a flight before doing any I/O of its own can still answer as the leader would.
    """

    def __init__(self, tasks: TaskSet) -> None:
        self._tasks = tasks
        self._flights: dict[K, tuple[asyncio.Task[T], P]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(
        self, key: K, start: Callable[[], Coroutine[Any, Any, T]], payload: P
    ) -> tuple[asyncio.Task[T], bool]:
        """The task in flight for `key` (and False), or a new one from `start()` (and True)."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight[0], False
        task = self._tasks.spawn(start(), name=f"fill:{id(key):x}")
        self._flights[key] = (task, payload)
        task.add_done_callback(lambda done: self._land(key, done))
        return task, True

    def peek(self, key: K) -> tuple[asyncio.Task[T], P] | None:
        """The flight for `key`, if one is running: its task and its leader's payload."""
        return self._flights.get(key)

    def forget(self, keys: Callable[[K], bool]) -> None:
        """Detach the flights of matching keys: they finish, but nobody new joins them."""
        for key in [key for key in self._flights if keys(key)]:
            del self._flights[key]

    def running(self, key: K) -> bool:
        return key in self._flights

    def _land(self, key: K, task: asyncio.Task[T]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight[0] is task:
            del self._flights[key]
