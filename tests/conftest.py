"""Shared fixtures: a real redis-server, the fake Lunary upstream, and proxies over real HTTP."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from config import Settings
from proxy.__main__ import server_options
from proxy.web.app import create_app
from tests.fake_lunary import FakeLunary
from tests.servers import (
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    ServerThread,
    TlsFiles,
    make_tls_files,
)

SCOPE_SECRET = "test-scope-secret"
RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class WithExtras(logging.Formatter):
    """Shows a record's `extra` fields after its line: the proxy logs what failed there (the
    error, the store), and a failed CI run's captured log cannot say why without them."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        extras = {k: v for k, v in vars(record).items() if k not in RECORD_FIELDS}
        return f"{line} {extras}" if extras else line


def pytest_sessionstart(session: pytest.Session) -> None:
    capture = session.config.pluginmanager.get_plugin("logging-plugin")
    if capture is not None:
        for handler in (capture.caplog_handler, capture.report_handler):
            handler.setFormatter(WithExtras(capture.formatter))


# What marks a test redis_server (so `-m "not redis_server"` runs with no server at all):
# a server fixture in its closure, a fixture of its own that returns a server, or a case of the
# suite's store parametrization ([redis], [cluster]) that asks for a server by name at run time.
# A test any rule misses fails at RedisServer.start (see pytest_runtest_protocol below).
SERVER_FIXTURES = frozenset(
    {"redis_server", "tls_redis", "redis_cluster_servers", "redis_sentinel", "redis_url",
     "redis_cluster_url"}
)  # fmt: skip
SERVER_TYPES = re.compile(r"\bRedis(Server|ClusterServers|SentinelServers)\b")
REAL_STORE_PARAMS = frozenset({"redis", "cluster"})


def needs_redis_server(item: pytest.Item) -> bool:
    if not isinstance(item, pytest.Function):
        return False
    if SERVER_FIXTURES.intersection(item.fixturenames):
        return True
    for fixturedefs in item._fixtureinfo.name2fixturedefs.values():
        returns = [inspect.get_annotations(d.func).get("return", "") for d in fixturedefs]
        if any(SERVER_TYPES.search(str(annotation)) for annotation in returns):
            return True
    params = item.callspec.params.values() if hasattr(item, "callspec") else ()
    return any(isinstance(v, str) and v in REAL_STORE_PARAMS for v in params)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if needs_redis_server(item) and item.get_closest_marker("redis_server") is None:
            item.add_marker(pytest.mark.redis_server)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """An unmarked test that starts a redis-server fails, in every run: in the full one it
    would pass, and only the fast tier, with no server, would find it missing."""
    if item.get_closest_marker("redis_server") is None:
        RedisServer.refusal = (
            f"{item.nodeid} starts a redis-server but is not marked redis_server: request a "
            "server fixture, or add @pytest.mark.redis_server"
        )
    try:
        return (yield)
    finally:
        RedisServer.refusal = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that speaks TLS only, with a self-signed CA."""
    server = RedisServer(tls=make_tls_files(str(tmp_path_factory.mktemp("tls"))))
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster_servers() -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster on loopback ports."""
    cluster = RedisClusterServers()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelServers]:
    """A master, a replica and a sentinel on loopback ports."""
    servers = RedisSentinelServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


@pytest.fixture
def redis_cluster_url(redis_cluster_servers: RedisClusterServers) -> str:
    redis_cluster_servers.flush()
    return redis_cluster_servers.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A running, empty Redis (restarted if an earlier test left it stopped)."""
    if not redis_server.running:
        redis_server.start()
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def fake() -> FakeLunary:
    return FakeLunary()


@pytest.fixture
def upstream(fake: FakeLunary) -> Iterator[ServerThread]:
    with ServerThread(fake) as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a certificate it signed for localhost and 127.0.0.1."""
    return make_tls_files(str(tmp_path_factory.mktemp("upstream-tls")))


@pytest.fixture
def tls_upstream(fake: FakeLunary, tls_files: TlsFiles) -> Iterator[ServerThread]:
    """The fake Lunary over HTTPS, its certificate from tls_files' CA."""
    with ServerThread(fake, tls=tls_files) as server:
        yield server


@dataclass
class RunningProxy:
    app: Starlette
    url: str
    client: httpx.Client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


ProxyFactory = Callable[..., RunningProxy]


@pytest.fixture
def make_proxy(upstream: ServerThread) -> Iterator[ProxyFactory]:
    """Start a proxy over real HTTP in front of the fake upstream; settings may be overridden."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> RunningProxy:
            options: dict[str, Any] = {
                "upstream_url": upstream.url,
                "scope_secret": SCOPE_SECRET,
                "upstream_timeout": 2,
                # this proxy runs in the test process, whose garbage collection stops it too:
                # pauses of 130 ms were measured on an idle machine, over the 0.25 s default
                # on a busy one. The tests of the store timeout itself set it explicitly.
                "redis_timeout": 2,
            }
            options.update(overrides)
            settings = Settings(**options)
            app = create_app(settings)
            # served as `python -m proxy` serves it: its own HTTP protocol, no WebSockets
            server = stack.enter_context(ServerThread(app, **server_options(settings)))
            client = stack.enter_context(httpx.Client(base_url=server.url, timeout=10))
            return RunningProxy(app, server.url, client)

        yield start


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis_server),
        pytest.param("cluster", marks=pytest.mark.redis_server),
    ]
)
def proxy(request: pytest.FixtureRequest, make_proxy: ProxyFactory) -> RunningProxy:
    """A default proxy on the embedded store, on a real Redis and on a 3-master Cluster."""
    if request.param == "redis":
        return make_proxy(redis_url=request.getfixturevalue("redis_url"))
    if request.param == "cluster":
        return make_proxy(
            redis_url=request.getfixturevalue("redis_cluster_url"), redis_cluster=True
        )
    return make_proxy()
