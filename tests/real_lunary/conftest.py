"""Two proxy replicas on one real Redis, before the real Lunary backend the environment names.

Without one (see tier.py for the variables) every test of the tier is skipped, saying which
variables are missing: CI names none.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

from tests.real_lunary.tier import Backend, Tier
from tests.servers import RedisServer, replica_settings, running_replicas

NEGATIVE_TTL = 3  # seconds a 404 is kept: short, so the tier can watch one expire
# A write the proxy cannot read is a cut, which keeps older entries fresh in other scopes for up
# to the active-run TTL: far longer than any wait of the tier, so a cut cannot pass for an exact
# invalidation (with the default 2 s, polling for an OTLP write would outlast it).
ACTIVE_RUN_TTL = 30


@pytest.fixture(scope="session")
def backend() -> Backend:
    named = Backend.from_environ(os.environ)
    if isinstance(named, str):
        pytest.skip(named)
    return named


@pytest.fixture(scope="session")
def tier(backend: Backend, redis_server: RedisServer) -> Iterator[Tier]:
    """The backend first, so an unnamed one skips before any process starts."""
    if not redis_server.running:
        redis_server.start()
    settings = replica_settings(
        backend.url,
        redis_server.url,
        negative_ttl=str(NEGATIVE_TTL),
        active_run_ttl=str(ACTIVE_RUN_TTL),
    )
    with (
        running_replicas(2, settings) as (one, two),
        httpx.Client(base_url=backend.url, timeout=10) as lunary,
        httpx.Client(base_url=one.url, timeout=15) as first,
        httpx.Client(base_url=two.url, timeout=15) as second,
    ):
        yield Tier(backend, lunary, first, second)
