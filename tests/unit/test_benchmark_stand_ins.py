"""The benchmarks' stand-ins are swapped into the app where its own parts go (a type: ignore
there hides a mismatch from mypy): they must take the same arguments."""

from __future__ import annotations

from inspect import signature

from benchmarks.aiohttp_upstream import AiohttpUpstream
from proxy.upstream import LunaryUpstream


def test_the_aiohttp_baseline_takes_what_the_app_gives_its_upstream() -> None:
    assert list(signature(AiohttpUpstream).parameters) == list(signature(LunaryUpstream).parameters)
