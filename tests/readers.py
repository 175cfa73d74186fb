"""Driving the proxy's run readers (to the end, to the reason they stop, step by step) and its
Invalidator in tests."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from proxy.cache.invalidation import Invalidator
from proxy.cache.ports import Store
from proxy.core.cuts import Cuts
from proxy.core.model import Entry
from proxy.ingest.forms import RunReader
from proxy.ingest.reader import Unreadable, UnreadableBody
from proxy.ops.metrics import Metrics


def read_all(reader: RunReader) -> set[str]:
    """The runs a reader finds, read to its end."""
    for _ in reader.slices():
        pass
    return reader.run_ids


def unreadable_because(reader: RunReader) -> Unreadable:
    """Why a reader gives up (the test fails when it does not)."""
    with pytest.raises(UnreadableBody) as caught:
        read_all(reader)
    return caught.value.reason


def step_costs(reader: RunReader) -> tuple[list[float], Unreadable | None]:
    """The CPU time of each step a reader takes, and why it gave up, if it did."""
    costs: list[float] = []
    steps = reader.slices()
    try:
        while True:
            started = time.thread_time()
            if next(steps, StopIteration) is StopIteration:
                return costs, None
            costs.append(time.thread_time() - started)
    except UnreadableBody as exc:
        return costs, exc.reason


def invalidator_over(store: Store, **options: Any) -> Invalidator:
    """An Invalidator over `store` with the tests' defaults (a 2 s active-run TTL), and
    `options` in their place."""
    defaults: dict[str, Any] = {
        "metrics": Metrics(CollectorRegistry()),
        "keep_for": 60,
        "cuts": Cuts(2),
        "cut_window": 3,
    }
    return Invalidator(store, **(defaults | options))


def settled_entry() -> Entry:
    """A settled run's entry, stored long ago: fresh for a minute, stale for ten."""
    return Entry(200, "application/json", b"{}", '"e"', 1.7e9, 60, 600)
