"""Warnings that could come once per request, logged at most once per key per interval: an
outage says what it is in one line, not ten thousand, and the next line says how many were held
back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    """At most one line per key (a failure's cause, say) per `interval` seconds.

    A line held back is counted: the next one logged for its key carries the count in its
    `suppressed` field (0 when none were), and so does `flush`, for counts still held at the end.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}  # key -> when its last line was logged
        self._held: dict[str, int] = {}  # key -> lines held back since then
        self._fields: dict[str, dict[str, Any]] = {}  # key -> the last held line's fields

    def warning(self, key: str, message: str, fields: dict[str, Any]) -> bool:
        """Log `message` with `fields` unless `key` had a line in the last interval (then
        count it); True when it was logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            self._fields[key] = fields
            return False
        self._last[key] = now
        self._fields.pop(key, None)
        self._logger.warning(message, extra={**fields, "suppressed": self._held.pop(key, 0)})
        return True

    def flush(self, message: str) -> None:
        """One line per key with lines still held back (at shutdown): `message`, the last held
        line's fields and the count."""
        for key, count in list(self._held.items()):
            fields = self._fields.pop(key, {})
            self._logger.warning(message, extra={**fields, "suppressed": count})
        self._held.clear()
