"""Path checks (SPEC section 11) and the cached-route match."""

from __future__ import annotations

import pytest

from proxy.model import CachedRoute, RouteKind
from proxy.paths import check_path, match_cached_route, match_run_write, normalise_query

RUN = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/runs/" + RUN.encode(),
        b"/v1/runs/count",
        b"/v1/files/a%252e%252e/b",  # double-encoded dots stay as they are
        b"/v1/a..b/c.d/...",
        b"/v1/x%20y",
        b"/",
        b"/v1/runs/%7B" + RUN.encode() + b"%7D",
    ],
)
def test_acceptable_paths_pass(path: bytes) -> None:
    assert check_path(path) is None


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (b"/v1/../admin", "dot segment"),
        (b"/v1/./runs", "dot segment"),
        (b"/v1/..", "dot segment"),
        (b"/v1/%2e%2e/admin", "dot segment"),
        (b"/v1/%2E./admin", "dot segment"),
        (b"/v1/.%2e", "dot segment"),
        (b"/v1/%2e/x", "dot segment"),
        (b"/v1/a%2Fb", "encoded slash"),
        (b"/v1/a%2fb", "encoded slash"),
        (b"/v1/a%00", "encoded control"),
        (b"/v1/a%1F", "encoded control"),
        (b"/v1/a%7f", "encoded control"),
        (b"/v1/a\x00b", "control character"),
        (b"/v1/a\tb", "control character"),
        (b"/v1/a\x7fb", "control character"),
        (b"v1/runs", "must start"),
    ],
)
def test_refused_paths_say_why(path: bytes, why: str) -> None:
    rejected = check_path(path)

    assert rejected is not None
    assert why in rejected.message


@pytest.mark.parametrize(
    ("path", "route"),
    [
        (f"/v1/runs/{RUN}".encode(), CachedRoute(RouteKind.RUN, RUN)),
        (f"/v1/runs/{RUN.upper()}/related".encode(), CachedRoute(RouteKind.RELATED, RUN)),
        (f"/v1/runs/%7B{RUN}%7D".encode(), CachedRoute(RouteKind.RUN, RUN)),
        (f"/v1/runs/{RUN}/feedback".encode(), None),
        (f"/v1/runs/{RUN}/".encode(), None),
        (f"/v1/runs/{RUN}/related/x".encode(), None),
        (b"/v1/runs/count", None),
        (f"/v2/runs/{RUN}".encode(), None),
        (f"/api/v1/runs/{RUN}".encode(), None),
        (f"//v1/runs/{RUN}".encode(), None),
    ],
)
def test_cached_route_match(path: bytes, route: CachedRoute | None) -> None:
    assert match_cached_route(path) == route


def test_query_normalisation_sorts_raw_parameters() -> None:
    assert normalise_query(b"b=2&a=1") == normalise_query(b"a=1&b=2") == b"a=1&b=2"
    assert normalise_query(b"a=1&&b=%20") == b"a=1&b=%20"
    assert normalise_query(b"") == b""


@pytest.mark.parametrize(
    ("path", "run"),
    [
        (f"/v1/runs/{RUN}".encode(), RUN),
        (f"/v1/runs/{RUN.upper()}/tags".encode(), RUN),
        (f"/v1/runs/{RUN}/feedback/x".encode(), RUN),
        (f"/v1/runs/%7B{RUN}%7D/score".encode(), RUN),
        (b"/v1/runs/ingest", None),
        (b"/v1/runs", None),
        (f"/v2/runs/{RUN}".encode(), None),
    ],
)
def test_run_writes_name_their_run(path: bytes, run: str | None) -> None:
    assert match_run_write(path) == run
