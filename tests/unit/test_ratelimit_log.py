"""The rate-limited warning log: one line per key per interval, the rest counted, on a clock the
test moves."""

from __future__ import annotations

import logging

import pytest

from proxy.ops.ratelimit_log import RateLimitedLog

LOGGER = "lcp.test.ratelimit_log"


@pytest.fixture
def now() -> list[float]:
    return [100.0]


@pytest.fixture
def limited(now: list[float]) -> RateLimitedLog:
    return RateLimitedLog(logging.getLogger(LOGGER), interval=10.0, clock=lambda: now[0])


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int]]:
    return [
        (r.getMessage(), r.__dict__["cause"], r.__dict__["suppressed"])
        for r in caplog.records
        if r.name == LOGGER
    ]


def test_one_line_per_key_per_interval_then_the_count_held_back(
    limited: RateLimitedLog, now: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    logged = [limited.warning("refused", "failed", {"cause": "refused"}) for _ in range(50)]
    now[0] += 9.9
    held = limited.warning("refused", "failed", {"cause": "refused"})
    now[0] += 0.1  # ten seconds after the first line
    again = limited.warning("refused", "failed again", {"cause": "refused"})

    assert logged == [True] + [False] * 49
    assert not held
    assert again
    assert lines(caplog) == [("failed", "refused", 0), ("failed again", "refused", 50)]


def test_keys_are_limited_apart(limited: RateLimitedLog, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    for cause in ("refused", "dns", "refused", "dns", "tls"):
        limited.warning(cause, cause, {"cause": cause})

    assert lines(caplog) == [("refused", "refused", 0), ("dns", "dns", 0), ("tls", "tls", 0)]


def test_flush_tells_what_is_still_held_back_once(
    limited: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    for cause in ("refused", "refused", "refused", "dns"):
        limited.warning(cause, cause, {"cause": cause})
    limited.flush("held back")
    limited.flush("held back")  # nothing more to tell

    assert lines(caplog) == [
        ("refused", "refused", 0),
        ("dns", "dns", 0),
        ("held back", "refused", 2),
    ]
