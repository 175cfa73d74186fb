"""The routes table sends a path to a cached run route exactly when the core reads it as one.

The router matches the raw path (proxy/web/gate.py) with the run id convertor's regex; the core's
`match_cached_route` decides what is a run id. If the two disagreed, a run id spelling could pass
through uncached, or a non-run-id reach the read driver; hypothesis spells run ids and near
misses, each character literal or percent-encoded, and checks that the two agree on all of them.
"""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from starlette.routing import Match, Route

from config import Settings
from proxy.core.model import RouteKind
from proxy.core.paths import match_cached_route
from proxy.web.app import routes
from proxy.web.cached import RUN_ID_SPELLING, CachedRunRead
from proxy.web.components import Live
from tests.unit.test_properties import near_miss_spellings, uuid_spellings

CACHED_ROUTES = [
    route
    for route in routes(Settings(), Live(), CollectorRegistry())
    if isinstance(route, Route) and isinstance(route.endpoint, CachedRunRead)
]


@st.composite
def encoded(draw: st.DrawFn, text: str) -> str:
    """`text` with each character literal, percent-encoded (either case) or encoded twice."""
    spelled = []
    for char in text:
        form = draw(st.sampled_from(["literal", "upper", "lower", "twice"]))
        if form == "literal" and char.isascii():
            spelled.append(char)
            continue
        for byte in char.encode():  # a path on the wire is ASCII: others are always encoded
            if form == "lower":
                spelled.append(f"%{byte:02x}")
            else:
                spelled.append(f"%25{byte:02X}" if form == "twice" else f"%{byte:02X}")
    return "".join(spelled)


segments = st.one_of(
    uuid_spellings().flatmap(lambda spelled: encoded(spelled[1])),
    near_miss_spellings().flatmap(encoded),
    st.text(alphabet="0123456789abcdefABCDEF-{}%2357", max_size=44),
)


def routed(path: str) -> tuple[RouteKind, str] | None:
    """What the routes table does with GET `path`: the cached route and run id it picks."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
    for route in CACHED_ROUTES:
        match, child = route.matches(scope)
        if match is Match.FULL:
            assert isinstance(route.endpoint, CachedRunRead)
            return route.endpoint.kind, child["path_params"]["run_id"]
    return None


@given(segments, st.sampled_from(["", "/related"]))
@example("%7BA0EE-BC99-9C0B-4EF8-BB6D-6BB9-BD38-0A11%7d", "")
@example("a0eebc99%2D9c0b-4ef8-bb6d-6bb9bd380a11", "/related")
@example("%2541eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "")  # %25: a literal percent sign
@example("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11%2F", "")
def test_the_router_and_the_core_agree_on_every_spelling(segment: str, suffix: str) -> None:
    path = "/v1/runs/" + segment + suffix
    core = match_cached_route(path.encode("ascii"))

    assert (re.fullmatch(RUN_ID_SPELLING, segment) is not None) == (core is not None)
    assert routed(path) == (None if core is None else (core.kind, core.run_id))


def test_the_table_holds_one_route_per_cached_kind() -> None:
    kinds = [
        route.endpoint.kind for route in CACHED_ROUTES if isinstance(route.endpoint, CachedRunRead)
    ]
    assert sorted(kinds) == sorted(RouteKind)
