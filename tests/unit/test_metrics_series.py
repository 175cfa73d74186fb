"""Series an alert reads with increase() exist from 0 before their first event: increase() over
a series that appears at 1 counts nothing, so a pod's first failure would never alert."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from proxy.ops.metrics import INVALIDATION_SOURCES, Metrics


def test_every_invalidation_series_is_exported_at_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    Metrics(registry)

    for source in INVALIDATION_SOURCES:
        for result in ("ok", "error"):
            labels = {"source": source, "result": result}
            assert registry.get_sample_value("lunary_proxy_invalidations_total", labels) == 0.0
