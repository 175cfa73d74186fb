"""An egress proxy from the environment: HTTPS_PROXY (a CONNECT tunnel) and HTTP_PROXY carry
the upstream's requests, NO_PROXY exempts hosts, a login in the URL goes to the proxy alone; a
proxy that is down is a 502; Redis never goes through it."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import ProxyFactory, RunningProxy
from tests.connect_proxy import ConnectProxy
from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, ServerThread, TlsFiles, free_port

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
SetEnv = Callable[..., None]


@pytest.fixture
def egress(monkeypatch: pytest.MonkeyPatch) -> SetEnv:
    """Clears every proxy variable (lower case wins in urllib, so both cases); returns a setter.
    The proxy reads them as its app starts (EnvProxy), so set them before make_proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    def use(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return use


@pytest.fixture
def forward() -> Iterator[ConnectProxy]:
    with ConnectProxy() as proxy:
        yield proxy


def read(proxy: RunningProxy | ProxyProcess, run: str, key: str) -> httpx.Response:
    """A read from the test, never through the environment's proxy (trust_env off)."""
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=10) as client:
        return client.get(f"/v1/runs/{run}", headers={"Authorization": f"Bearer {key}"})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_an_https_upstream_goes_through_one_connect_tunnel(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    tls_upstream: ServerThread,
    tls_files: TlsFiles,
    forward: ConnectProxy,
    egress: SetEnv,
) -> None:
    egress(HTTPS_PROXY=forward.url)
    host = f"localhost:{tls_upstream.port}"
    proxy = make_proxy(upstream_url=f"https://{host}", upstream_ca_file=tls_files.ca)
    key, runs = fake.add_key(), [fake.add_run() for _ in range(3)]

    answers = [read(proxy, run, key) for run in [*runs, runs[0]]]

    assert [a.status_code for a in answers] == [200] * 4
    assert [a.headers["x-cache"] for a in answers] == ["MISS", "MISS", "MISS", "HIT"]
    assert forward.tunnels == [host]  # by name, and reused for every fill
    assert tls_upstream.handshakes == ["localhost"]  # TLS (and SNI) end to end, inside it
    assert fake.count("/v1/runs/") == 3


def test_the_upstream_certificate_is_verified_through_the_tunnel(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    tls_upstream: ServerThread,
    forward: ConnectProxy,
    egress: SetEnv,
) -> None:
    egress(HTTPS_PROXY=forward.url)
    proxy = make_proxy(upstream_url=f"https://localhost:{tls_upstream.port}")  # no CA file

    assert read(proxy, fake.add_run(), fake.add_key()).status_code == 502
    assert forward.tunnels == [f"localhost:{tls_upstream.port}"]
    assert fake.count() == 0


def test_a_plain_http_upstream_goes_through_http_proxy(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    upstream: ServerThread,
    forward: ConnectProxy,
    egress: SetEnv,
) -> None:
    egress(HTTP_PROXY=forward.url, HTTPS_PROXY="http://127.0.0.1:9")  # the wrong one for http
    proxy = make_proxy()
    key, run = fake.add_key(), fake.add_run()

    answers = [read(proxy, run, key) for _ in range(2)]

    assert [a.headers["x-cache"] for a in answers] == ["MISS", "HIT"]
    assert forward.forwarded == [f"{upstream.url}/v1/runs/{run}"]
    assert forward.tunnels == []
    assert fake.count(run) == 1


@pytest.mark.parametrize("no_proxy", ["lunary.example,127.0.0.1", "*"])
def test_no_proxy_naming_the_upstream_bypasses_the_proxy(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    forward: ConnectProxy,
    egress: SetEnv,
    no_proxy: str,
) -> None:
    egress(HTTP_PROXY=forward.url, HTTPS_PROXY=forward.url, NO_PROXY=no_proxy)
    proxy = make_proxy()

    assert read(proxy, fake.add_run(), fake.add_key()).status_code == 200
    assert forward.asked == []


def test_no_proxy_naming_another_host_keeps_the_proxy(
    make_proxy: ProxyFactory, fake: FakeLunary, forward: ConnectProxy, egress: SetEnv
) -> None:
    egress(HTTP_PROXY=forward.url, NO_PROXY="lunary.example,10.0.0.1")
    proxy = make_proxy()

    assert read(proxy, fake.add_run(), fake.add_key()).status_code == 200
    assert len(forward.forwarded) == 1


def test_the_proxy_login_goes_to_the_proxy_only(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    tls_upstream: ServerThread,
    tls_files: TlsFiles,
    forward: ConnectProxy,
    egress: SetEnv,
) -> None:
    egress(HTTPS_PROXY=forward.url_with("egress-user", "s3cr%40t"))  # percent-encoded `@`
    proxy = make_proxy(
        upstream_url=f"https://localhost:{tls_upstream.port}", upstream_ca_file=tls_files.ca
    )
    key, run = fake.add_key(), fake.add_run()

    assert read(proxy, run, key).status_code == 200
    assert [a.proxy_authorization for a in forward.asked] == [basic("egress-user", "s3cr@t")]
    (seen,) = fake.requests
    assert seen.header(b"proxy-authorization") is None
    assert seen.header(b"authorization") == f"Bearer {key}".encode()


def test_the_proxy_login_goes_with_plain_http_requests(
    make_proxy: ProxyFactory, fake: FakeLunary, forward: ConnectProxy, egress: SetEnv
) -> None:
    egress(HTTP_PROXY=forward.url_with("egress-user", "pw"))
    proxy = make_proxy()

    assert read(proxy, fake.add_run(), fake.add_key()).status_code == 200
    assert [a.proxy_authorization for a in forward.asked] == [basic("egress-user", "pw")]


@pytest.mark.parametrize("proxy_state", ["down", "refusing"])
def test_a_proxy_that_is_down_or_refuses_is_a_prompt_502(
    make_proxy: ProxyFactory,
    fake: FakeLunary,
    tls_upstream: ServerThread,
    tls_files: TlsFiles,
    egress: SetEnv,
    proxy_state: str,
) -> None:
    with ConnectProxy(refuse=407) as refusing:
        url = refusing.url if proxy_state == "refusing" else f"http://127.0.0.1:{free_port()}"
        egress(HTTPS_PROXY=url)
        proxy = make_proxy(
            upstream_url=f"https://localhost:{tls_upstream.port}", upstream_ca_file=tls_files.ca
        )
        started = time.monotonic()

        answer = read(proxy, fake.add_run(), fake.add_key())

    assert answer.status_code == 502
    assert answer.json()["cause"] == "proxy"
    assert answer.headers["cache-status"].endswith("; detail=proxy")
    assert time.monotonic() - started < 1.5  # not the 2 s upstream timeout (that is a 504)
    assert fake.count() == 0


def test_redis_never_goes_through_the_environment_proxy(
    fake: FakeLunary, redis_url: str, egress: SetEnv
) -> None:
    """Every proxy variable names a dead port; only the upstream is exempt (NO_PROXY): the
    store, at another address, is reached and used as ever."""
    with ServerThread(fake) as upstream:
        dead = f"http://127.0.0.1:{free_port()}"
        settings = {
            "PROXY_UPSTREAM_URL": f"http://localhost:{upstream.port}",
            "PROXY_REDIS_URL": redis_url,
            "PROXY_NEAR_CACHE": "false",  # a HIT then comes from Redis
            "HTTP_PROXY": dead,
            "HTTPS_PROXY": dead,
            "ALL_PROXY": dead,
            "NO_PROXY": "localhost",
        }
        key, run = fake.add_key(), fake.add_run()
        with ProxyProcess(**settings) as proxy:
            answers = [read(proxy, run, key) for _ in range(2)]
            ready = httpx.get(f"{proxy.url}/readyz", trust_env=False)

    assert [a.headers["x-cache"] for a in answers] == ["MISS", "HIT"]
    assert ready.status_code == 200
    assert fake.count(run) == 1
