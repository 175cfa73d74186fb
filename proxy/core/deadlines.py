"""Until when each key holds (a cooldown, a clear reading, a refresh back-off), in memory and
bounded in keys: clients choose the keys, so they must not grow the map for ever."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """A deadline per key. At `bound` keys the expired ones are dropped; if `flood_at` or more
    are left even then (a flood of keys, each still running), all are forgotten."""

    __slots__ = ("_bound", "_flood_at", "_until")

    def __init__(self, bound: int, flood_at: int | None = None) -> None:
        self._bound = bound
        self._flood_at = flood_at
        self._until: dict[K, float] = {}

    def until(self, key: K) -> float:
        """The key's deadline; 0 when it has none."""
        return self._until.get(key, 0.0)

    def set(self, key: K, until: float, now: float) -> None:
        if len(self._until) >= self._bound:
            self._until = {k: u for k, u in self._until.items() if u > now}
            if self._flood_at is not None and len(self._until) >= self._flood_at:
                self._until.clear()
        self._until[key] = until
