"""Path checks (SPEC section 11) and the cached-route match."""

from __future__ import annotations

import pytest

from proxy.core.model import CachedRoute, RouteKind
from proxy.core.paths import (
    check_path,
    is_own_surface,
    match_cached_route,
    match_run_write,
    normalise_query,
    writes_unnamed_runs,
)

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
        b"/v1/files/caf%C3%A9",  # a UTF-8 escape
        b"/v1/files/%F0%9F%98%80%EF%BF%BE",  # four bytes; a noncharacter is still UTF-8
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
        (b"/v1/runs/%c0%ae/x", "not valid UTF-8"),  # an overlong '.'
        (b"/v1/runs/%C0%AE%C0%AE/admin", "not valid UTF-8"),
        (b"/v1/runs/%e0%80%ae", "not valid UTF-8"),  # overlong, three bytes
        (b"/v1/runs/%c0%af", "not valid UTF-8"),  # an overlong '/'
        (b"/v1/runs/%ed%a0%80", "not valid UTF-8"),  # a surrogate
        (b"/v1/runs/%f4%90%80%80", "not valid UTF-8"),  # past U+10FFFF
        (b"/v1/runs/%c3", "not valid UTF-8"),  # cut short
        (b"/v1/runs/%ff", "not valid UTF-8"),
        (b"/v1/runs/%80", "not valid UTF-8"),
        (b"/v1/runs/\xc3\xa9", "not ASCII"),  # raw UTF-8: uvicorn refuses it too
        (b"/v1/runs/\x80", "not ASCII"),
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
    ("query", "normalised"),
    [
        (b"projectId=p2&projectId=p1", b"projectId=p2&projectId=p1"),
        (b"b=2&projectId=p2&a=1&projectId=p1", b"a=1&b=2&projectId=p2&projectId=p1"),
        (b"a=2&b&a", b"a=2&a&b"),  # a bare name is a name too
        # one name to Lunary however spelled: its values keep their order
        (b"projectId=b&project%49d=a", b"projectId=b&project%49d=a"),
        (b"project%49d=a&projectId=b", b"project%49d=a&projectId=b"),
        (b"a+b=2&a%20b=1&a=0", b"a=0&a+b=2&a%20b=1"),
    ],
)
def test_repeated_parameters_keep_their_order(query: bytes, normalised: bytes) -> None:
    assert normalise_query(query) == normalised


@pytest.mark.parametrize(
    "path",
    [
        b"/admin/cache/runs/" + RUN.encode(),
        b"//admin/cache/runs/" + RUN.encode(),  # a base URL with a trailing slash
        b"/admin;/cache/runs/" + RUN.encode(),
        b"/admin;jsessionid=1/cache/runs/x",
        b"/admin%3B/cache",
        b"/ADMIN",
        b"/Admin/",
        b"/%61dmin/x",
        b"/%2561dmin/x",  # decoded twice
        b"/%252561dmin/x",  # three times
        b"/x/..;/admin/cache",
        b"/x/%2e%2e/admin",
        b"/x/%252e%252e/admin",
        b"/.//admin",
        b"/x\\..\\admin",
        b"\\admin",
        b"/openapi.json",
        b"/openapi.json/",
        b"//OpenAPI.json",
        b"/openapi.json;x",
        b"/%6Fpenapi%2Ejson",
    ],
)
def test_every_normalisation_of_the_own_surface_is_caught(path: bytes) -> None:
    assert is_own_surface(path)


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/runs/" + RUN.encode(),
        b"/v1/admin",
        b"/administrator",
        b"/admins/x",
        b"/v1/openapi.json",
        b"/openapi.json/x",
        b"/admin/..",
        b"/%25252561dmin/x",  # past the decodings any server applies; Lunary decodes once
        b"/",
        b"",
    ],
)
def test_other_paths_are_not_the_own_surface(path: bytes) -> None:
    assert not is_own_surface(path)


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


@pytest.mark.parametrize(
    ("method", "path", "cuts"),
    [
        ("DELETE", b"/v1/external-users/42", True),  # its runs go with it
        ("DELETE", b"/V1/Projects/%s/" % RUN.encode(), True),  # Lunary's router ignores case
        ("DELETE", b"/v1/templates/7", True),
        ("PATCH", b"/v1/evaluators/%s" % RUN.encode(), True),
        ("DELETE", b"/v1/evaluators/%s" % RUN.encode(), True),
        ("PATCH", b"/v1/projects/%s" % RUN.encode(), False),  # a rename changes no run
        ("POST", b"/v1/evaluators", False),
        ("DELETE", b"/v1/external-users", False),
        ("DELETE", b"/v1/projects/x/members/y", False),
        ("DELETE", b"/v1/runs/%s" % RUN.encode(), False),  # names its run: dropped exactly
    ],
)
def test_the_writes_that_change_runs_they_do_not_name(method: str, path: bytes, cuts: bool) -> None:
    assert writes_unnamed_runs(method, path) is cuts
