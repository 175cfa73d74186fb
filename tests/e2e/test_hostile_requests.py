"""Requests built to slip something past the proxy (issue 13, points 4-7): a purge spelled so the
proxy forwards it, the admin token sent to Lunary, a credential dropped as hop-by-hop after it
scoped the entry, reordered repeated parameters sharing one entry, overlong UTF-8 in a path.
Each is refused or kept apart, and the fake Lunary's record shows what never reached it."""

from __future__ import annotations

from urllib.parse import quote

import orjson
import pytest

from tests.conftest import ProxyFactory, RunningProxy
from tests.fake_lunary import FakeLunary
from tests.servers import raw_answer

ADMIN_TOKEN = "lcp-admin-token-4f9d2c7e"
BEARER = f"Bearer {ADMIN_TOKEN}"


def raw_request(
    proxy: RunningProxy, method: bytes, target: bytes, *lines: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Send the request-target as written (httpx would normalise `//`, `;` and escapes)."""
    head = [method + b" " + target + b" HTTP/1.1", b"Host: x", b"Connection: close", *lines]
    return raw_answer(proxy.port, b"\r\n".join(head) + b"\r\n\r\n")


def token_reached(fake: FakeLunary) -> bool:
    return any(ADMIN_TOKEN.encode() in value for seen in fake.requests for _, value in seen.headers)


# -- 4. the admin surface and the admin token -----------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    [
        b"//admin/cache/runs/",  # an admin client whose base URL ends in '/'
        b"/admin;/cache/runs/",
        b"/admin;jsessionid=1/cache/runs/",
        b"/admin%3B/cache/runs/",
        b"/v1/..;/admin/cache/runs/",
        b"/%2561dmin/cache/runs/",
        b"/ADMIN//cache/runs/",
    ],
)
def test_no_spelling_of_a_purge_is_forwarded(
    make_proxy: ProxyFactory, fake: FakeLunary, prefix: bytes
) -> None:
    """They reached Lunary, admin token included, and purged nothing."""
    proxy = make_proxy(admin_token=ADMIN_TOKEN)
    run = fake.add_run()

    status, _, body = raw_request(
        proxy, b"DELETE", prefix + run.encode(), b"Authorization: " + BEARER.encode()
    )

    assert status == 404
    assert "/admin/cache/runs/{id}" in orjson.loads(body)["message"]  # how to spell it
    assert fake.requests == []


@pytest.mark.parametrize(
    "header",
    [
        ("Authorization", BEARER),
        ("Authorization", ADMIN_TOKEN),
        ("X-API-Key", ADMIN_TOKEN),
        ("Cookie", f"session=1; admin={ADMIN_TOKEN}"),
        ("X-Admin", ADMIN_TOKEN),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/runs/{run}"),  # a cache fill
        ("GET", "/v1/runs/{run}/related"),
        ("HEAD", "/v1/runs/{run}"),
        ("DELETE", "/v1/runs/{run}"),  # passthrough
        ("GET", "/v1/template_versions/latest"),
    ],
)
def test_the_admin_token_is_never_sent_upstream(
    make_proxy: ProxyFactory, fake: FakeLunary, header: tuple[str, str], method: str, path: str
) -> None:
    proxy = make_proxy(admin_token=ADMIN_TOKEN)
    run = fake.add_run()

    answer = proxy.client.request(method, path.format(run=run), headers=[header])

    assert answer.status_code == 400
    if method != "HEAD":
        assert answer.json()["error"] == "bad_request"
        assert header[0].lower() in answer.json()["message"]
    assert ADMIN_TOKEN not in answer.text
    assert fake.requests == []
    assert not token_reached(fake)


@pytest.mark.parametrize(
    "query",
    [f"token={ADMIN_TOKEN}", f"a=1&key={quote(ADMIN_TOKEN, safe='')}", f"t={ADMIN_TOKEN}&x=2"],
)
@pytest.mark.parametrize("path", ["/v1/runs/{run}", "/v1/template_versions/latest"])
def test_the_admin_token_in_the_query_string_is_never_sent_upstream(
    make_proxy: ProxyFactory, fake: FakeLunary, query: str, path: str
) -> None:
    proxy = make_proxy(admin_token=ADMIN_TOKEN)
    run = fake.add_run()

    answer = proxy.client.get(path.format(run=run) + "?" + query)

    assert answer.status_code == 400
    assert "query string" in answer.json()["message"]
    assert ADMIN_TOKEN not in answer.text
    assert fake.requests == []


def test_the_admin_token_is_refused_on_a_hit_and_lunary_keys_pass(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    """Refused before routing, cached answer or not; an ordinary Lunary key is untouched."""
    proxy = make_proxy(admin_token=ADMIN_TOKEN)
    key, run = fake.add_key(), fake.add_run()
    auth = {"Authorization": f"Bearer {key}"}

    read = proxy.get(f"/v1/runs/{run}", headers=auth)
    other = proxy.get("/v1/template_versions/latest", headers={"X-API-Key": key})
    with_token = proxy.get(f"/v1/runs/{run}", headers={**auth, "X-API-Key": ADMIN_TOKEN})
    hit = proxy.get(f"/v1/runs/{run}", headers=auth)
    purge = proxy.client.delete(f"/admin/cache/runs/{run}", headers={"Authorization": BEARER})

    assert (read.status_code, other.status_code, hit.status_code) == (200, 200, 200)
    assert with_token.status_code == 400
    assert "x-cache" not in with_token.headers
    assert hit.headers["x-cache"] == "HIT"
    assert purge.status_code == 200
    assert [seen.header(b"authorization") for seen in fake.requests] == [
        auth["Authorization"].encode(),
        None,
    ]
    assert fake.requests[1].header(b"x-api-key") == key.encode()
    assert not token_reached(fake)


# -- 5. a credential named in Connection -----------------------------------------------------


@pytest.mark.parametrize(
    ("credential", "named"),
    [
        ("Authorization", "authorization"),
        ("X-API-Key", "X-Api-Key"),
        ("Authorization", "close, Authorization"),
    ],
)
def test_a_credential_named_in_connection_is_refused_and_poisons_nothing(
    make_proxy: ProxyFactory, fake: FakeLunary, credential: str, named: str
) -> None:
    """It was dropped as hop-by-hop, so Lunary answered the anonymous 404, stored under the
    scope of the credential it never saw: the owner then got that 404 from the cache."""
    proxy = make_proxy()
    key, run = fake.add_key(), fake.add_run()
    value = f"Bearer {key}" if credential == "Authorization" else key

    hostile = proxy.get(f"/v1/runs/{run}", headers={credential: value, "Connection": named})
    owner = proxy.get(f"/v1/runs/{run}", headers={credential: value})

    assert hostile.status_code == 400
    assert hostile.json()["error"] == "bad_request"
    assert credential.lower() in hostile.json()["message"].lower()
    assert key not in hostile.text
    assert owner.status_code == 200
    assert owner.headers["x-cache"] == "MISS"
    assert len(fake.requests) == 1


def test_a_credential_named_in_connection_is_refused_on_passthrough(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    proxy = make_proxy()
    key = fake.add_key()

    answer = proxy.client.post(
        "/v1/runs/ingest",
        content=b'{"events": []}',
        headers={"X-API-Key": key, "Connection": "x-api-key"},
    )

    assert answer.status_code == 400
    assert fake.requests == []


# -- 6. repeated query parameters ------------------------------------------------------------


def test_repeated_parameters_in_another_order_are_another_entry(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    """`projectId=p1&projectId=p2` and `projectId=p2&projectId=p1` shared one entry."""
    proxy = make_proxy()
    key, run = fake.add_key(), fake.add_run()
    auth = {"Authorization": f"Bearer {key}"}

    def cache(query: str) -> str:
        return proxy.get(f"/v1/runs/{run}?{query}", headers=auth).headers["x-cache"]

    first = cache("projectId=p1&projectId=p2")
    swapped = cache("projectId=p2&projectId=p1")
    again = cache("projectId=p1&projectId=p2")
    # distinct names still share an entry in any order
    other = cache("a=1&projectId=p2&projectId=p1")
    moved = cache("projectId=p2&a=1&projectId=p1")

    assert (first, swapped, again, other, moved) == ("MISS", "MISS", "HIT", "MISS", "HIT")
    assert [seen.query_string for seen in fake.requests] == [
        b"projectId=p1&projectId=p2",
        b"projectId=p2&projectId=p1",
        b"a=1&projectId=p2&projectId=p1",
    ]


# -- 7. percent-encodings that are not UTF-8 -------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/runs/%c0%ae/x",  # an overlong '.'
        b"/v1/runs/%C0%AE%C0%AE/admin",
        b"/v1/runs/%e0%80%ae/related",
        b"/v1/runs/%c0%af",  # an overlong '/'
        b"/v1/runs/%ed%a0%80",  # a surrogate
        b"/v1/template_versions/%ff",
        b"/v1/runs/%c3",
    ],
)
@pytest.mark.parametrize("method", [b"GET", b"DELETE"])
def test_percent_encodings_that_are_not_utf8_are_refused(
    make_proxy: ProxyFactory, fake: FakeLunary, target: bytes, method: bytes
) -> None:
    proxy = make_proxy()

    status, _, body = raw_request(proxy, method, target)

    assert status == 400
    assert orjson.loads(body) == {
        "error": "bad_request",
        "message": "Rejected request path: the path holds a percent-encoding that is not "
        "valid UTF-8.",
    }
    assert fake.requests == []


def test_only_percent_encoded_utf8_reaches_lunary(
    make_proxy: ProxyFactory, fake: FakeLunary
) -> None:
    """Raw bytes above 0x7F never reach the app (uvicorn refuses them, and so would
    check_path); escapes of valid UTF-8 are forwarded as written, others refused."""
    proxy = make_proxy()

    escaped, _, _ = raw_request(proxy, b"GET", b"/v1/template_versions/caf%C3%A9")
    overlong, _, _ = raw_request(proxy, b"GET", b"/v1/template_versions/caf%C3%A9%C0%AE")
    raw, _, body = raw_request(proxy, b"GET", b"/v1/template_versions/caf\xc3\xa9")

    assert (escaped, overlong, raw) == (404, 400, 400)  # 404: the fake Lunary's answer
    assert orjson.loads(body)["error"] == "bad_request"
    assert [seen.raw_path for seen in fake.requests] == [b"/v1/template_versions/caf%C3%A9"]
