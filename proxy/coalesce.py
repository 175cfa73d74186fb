"""Single-flight within the process: concurrent misses for one key share one fetch.

The fetch runs as a task of its own, not inside the leader's request, so it finishes (and its
result is stored) even when the leader's client goes away or every waiter gives up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

from proxy.tasks import TaskSet

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """At most one running task per key; later callers join it."""

    def __init__(self, tasks: TaskSet) -> None:
        self._tasks = tasks
        self._flights: dict[K, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(
        self, key: K, start: Callable[[], Coroutine[Any, Any, T]]
    ) -> tuple[asyncio.Task[T], bool]:
        """The task in flight for `key` (and False), or a new one from `start()` (and True)."""
        task = self._flights.get(key)
        if task is not None:
            return task, False
        task = self._tasks.spawn(start(), name=f"fill:{id(key):x}")
        self._flights[key] = task
        task.add_done_callback(lambda done: self._land(key, done))
        return task, True

    def running(self, key: K) -> bool:
        return key in self._flights

    def _land(self, key: K, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
