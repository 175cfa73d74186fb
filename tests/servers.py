"""Real servers for the tests: uvicorn in a thread, and a redis-server process on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import redis
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerThread:
    """An ASGI app served by uvicorn over real HTTP on a loopback port, in its own thread.

    With `tls` (a TlsFiles), over HTTPS with its certificate; `handshakes` then records the
    name each TLS client sent (SNI; None without one), one per connection made.
    """

    def __init__(self, app: Any, *, tls: TlsFiles | None = None, **options: Any) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.handshakes: list[str | None] = []
        defaults: dict[str, Any] = {
            "log_config": None,
            "access_log": False,
            "lifespan": "on",
            "proxy_headers": False,
            "timeout_graceful_shutdown": 2,
        }
        if tls is not None:
            defaults.update(
                ssl_certfile=tls.cert, ssl_keyfile=tls.key, ssl_context_factory=self._recording
            )
        config = uvicorn.Config(app, **{**defaults, **options})
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _recording(
        self, config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        context = default()

        def record(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
            self.handshakes.append(name)

        context.sni_callback = record
        return context

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self._sock]))

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.server.should_exit = True
            self._thread.join(timeout=10)
        self._sock.close()


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes exactly as given to a loopback port (an HTTP client would normalise them),
    then read until the server closes: b"" if it closed at once, what came before a reset."""
    received: list[bytes] = []
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # refused before it read everything: what it answered is still there to read
        with contextlib.suppress(OSError):
            sock.sendall(request)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # closed with our bytes unread: a refusal
                break
            except TimeoutError:
                raise AssertionError(f"no answer and no close in {timeout} s") from None
            if not chunk:
                break
            received.append(chunk)
            assert time.monotonic() < deadline, "the answer never ended"
    return b"".join(received)


def raw_answer(
    port: int, request: bytes, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """raw_exchange, with the answer split: status, headers (names in lower case) and body."""
    answer = raw_exchange(port, request, timeout)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def redis_binary() -> str:
    """redis-server from PATH (CI installs it); fail loudly rather than skip real-store tests."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed: run `apt-get install -y redis-server`")
    return path


class RawServer:
    """A TCP server on loopback, one connection at a time, for upstreams that misbehave below
    HTTP: `answer` gets each connection once it has sent its request."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def answer(self, conn: socket.socket) -> None:
        """Close without answering (subclasses answer otherwise)."""

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    if conn.recv(65536):
                        self.requests += 1
                        self.answer(conn)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


class RedisServer:
    """A redis-server process on a free loopback port that a test may stop and start again.

    With `tls` (a TlsFiles), it listens for TLS only, with a certificate for 127.0.0.1.
    """

    # Set by tests/conftest.py while a test without the redis_server marker runs, to the
    # reason it may not start one: such a test would break `-m "not redis_server"`, the fast
    # tier that runs with no server at all. None (outside pytest too): starting is allowed.
    refusal: ClassVar[str | None] = None

    def __init__(self, *extra_args: str, tls: TlsFiles | None = None, port: int = 0) -> None:
        self.port = port or free_port()
        self.tls = tls
        if tls is None:
            self.url = f"redis://127.0.0.1:{self.port}/0"
        else:
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={tls.ca}"
            extra_args = (
                "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls.cert,
                "--tls-key-file", tls.key, "--tls-ca-cert-file", tls.ca,
                "--tls-auth-clients", "no", *extra_args,
            )  # fmt: skip
        self._extra = extra_args
        self._dir = tempfile.mkdtemp(prefix="lcp-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if RedisServer.refusal is not None:
            raise RuntimeError(RedisServer.refusal)
        port_args = () if self.tls else ("--port", str(self.port))
        self._process = subprocess.Popen(
            [
                redis_binary(),
                *port_args,
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--enable-debug-command", "local",
                "--dir", self._dir,
                *self._extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)
        self._process = None

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def client(self) -> redis.Redis:
        if self.tls is not None:
            return redis.Redis(
                port=self.port, host="127.0.0.1", socket_timeout=2, ssl=True,
                ssl_ca_certs=self.tls.ca,
            )  # fmt: skip
        return redis.Redis(port=self.port, host="127.0.0.1", socket_timeout=2)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the server's process (SIGSTOP) for the block: its sockets stay open and silent,
        as across a partition, then it goes on (SIGCONT)."""
        assert self._process is not None, "not started"
        os.kill(self._process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self._process.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Stop the server for the duration of the block, then start it again."""
        self.stop()
        try:
            yield
        finally:
            self.start()


def replica_settings(upstream_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """PROXY_* settings for replicas sharing one store and one scope secret (so one cache).

    `extra` takes setting names without the prefix: `cache_ttl="3"` is PROXY_CACHE_TTL.
    """
    settings = {
        "PROXY_UPSTREAM_URL": upstream_url,
        "PROXY_REDIS_URL": redis_url,
        "PROXY_SCOPE_SECRET": "shared-scope-secret",
        "PROXY_LOG_LEVEL": "warning",
    }
    settings.update({f"PROXY_{name.upper()}": value for name, value in extra.items()})
    return settings


class ProxyProcess:
    """`python -m proxy` in its own process on a free loopback port, stopped by its PID."""

    def __init__(self, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
        env.update({"PROXY_HOST": "127.0.0.1", "PROXY_PORT": str(self.port), **settings})
        self._env = env
        self._dir = tempfile.mkdtemp(prefix="lcp-proxy-")
        self._log = open(os.path.join(self._dir, "proxy.log"), "wb")  # noqa: SIM115
        self._process: subprocess.Popen[bytes] | None = None
        self.final_log = ""  # everything it logged, kept once it has stopped

    def __enter__(self) -> ProxyProcess:
        import sys

        import httpx

        self._process = subprocess.Popen(
            [sys.executable, "-m", "proxy"],
            env=self._env,
            cwd=self._dir,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"proxy did not start:\n{self.log()}")
            time.sleep(0.05)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "not started"
        return self._process

    def log(self) -> str:
        self._log.flush()
        with open(os.path.join(self._dir, "proxy.log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=5)
        self.final_log = self.log()
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def running_replicas(count: int, settings: dict[str, str]) -> Iterator[list[ProxyProcess]]:
    """`count` proxy processes with the same settings (see replica_settings), all stopped on
    the way out, also when one of them failed to start."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(ProxyProcess(**settings)) for _ in range(count)]


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str


def make_tls_files(
    directory: str, names: tuple[str, ...] = ("IP:127.0.0.1", "DNS:localhost")
) -> TlsFiles:
    """A throwaway CA and a server certificate for `names` (subjectAltName entries; the first
    is also its common name), made with the openssl CLI."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=lcp-test-ca", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0].split(':', 1)[1]}",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    with open(os.path.join(directory, "san.cnf"), "w") as f:
        f.write(f"subjectAltName={','.join(names)}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf",
            "-out", "server.crt")  # fmt: skip
    return TlsFiles(*(os.path.join(directory, n) for n in ("ca.crt", "server.crt", "server.key")))


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """Three masters on loopback, joined with `redis-cli --cluster create`."""

    def __init__(self) -> None:
        cluster_args = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")
        self.nodes = [RedisServer(*cluster_args, port=cluster_port()) for _ in range(3)]
        self.url = self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not all(
            node.client().cluster("info")["cluster_state"] == "ok" for node in self.nodes
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the test Redis Cluster did not become ready")
            time.sleep(0.2)

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class RedisSentinelServers:
    """A master, a replica and one sentinel watching them, all on loopback.

    The sentinel declares the master down after `down_after_ms` without an answer, and with
    `failover_timeout_ms` a test can kill the master (kill_master) and wait for the replica's
    promotion (wait_for_promotion) within a few seconds.
    """

    SERVICE = "lcp-master"

    def __init__(self, down_after_ms: int = 5000, failover_timeout_ms: int | None = None) -> None:
        self.master = RedisServer()
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinel_port = free_port()
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}/0"
        self._down_after_ms = down_after_ms
        self._failover_timeout_ms = failover_timeout_ms
        self._dir = tempfile.mkdtemp(prefix="lcp-sentinel-")
        self._sentinel: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        conf = os.path.join(self._dir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self._dir}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self._down_after_ms}\n"
            )
            if self._failover_timeout_ms is not None:
                f.write(f"sentinel failover-timeout {self.SERVICE} {self._failover_timeout_ms}\n")
        self._sentinel = subprocess.Popen(
            [redis_binary(), conf, "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.sentinel_port, host="127.0.0.1", socket_timeout=2)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(redis.RedisError):
                if client.sentinel_get_master_addr_by_name(self.SERVICE):
                    return
            if self._sentinel.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test sentinel did not start")
            time.sleep(0.1)

    def close(self) -> None:
        if self._sentinel is not None and self._sentinel.poll() is None:
            os.kill(self._sentinel.pid, signal.SIGKILL)
            self._sentinel.wait(timeout=10)
        self.replica.close()
        self.master.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, host="127.0.0.1", socket_timeout=2)

    def master_node(self) -> RedisServer:
        """The node the sentinel names as the master now."""
        address = self.sentinel_client().sentinel_get_master_addr_by_name(self.SERVICE)
        assert isinstance(address, tuple), address
        return next(node for node in (self.master, self.replica) if node.port == int(address[1]))

    def wait_for_replica(self, within: float = 15.0) -> None:
        """Until the sentinel knows a healthy replica (a failover needs one to promote) and the
        replica holds everything the master wrote so far."""
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(redis.RedisError):
                replicas = self.sentinel_client().sentinel_slaves(self.SERVICE)
                healthy = [r for r in replicas if r.get("master-link-status") == "ok"
                           and not r.get("is_sdown") and not r.get("is_disconnected")]  # fmt: skip
                if healthy and self.master_node().client().wait(1, 1000) >= 1:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel knows no healthy replica")
            time.sleep(0.1)

    def kill_master(self) -> RedisServer:
        """SIGKILL the node that is the master now; returns it."""
        node = self.master_node()
        node.stop()
        return node

    def wait_for_promotion(self, old: RedisServer, within: float = 20.0) -> RedisServer:
        """The node the sentinel promoted in `old`'s place, once it says it is a master."""
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(redis.RedisError):
                node = self.master_node()
                if node is not old and node.client().info("replication")["role"] == "master":
                    return node
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica was promoted within {within} s")
            time.sleep(0.05)


def answer_tag(method: str, target: str, authorization: str, api_key: str) -> str:
    """What InjectingUpstream writes as `answers` in the body it sends back for a request."""
    import hashlib

    named = "\n".join((method, target, authorization, api_key)).encode()
    return hashlib.sha256(named).hexdigest()[:16]


def _json_answer(tag: str, run_id: str) -> bytes:
    # a settled run, so the proxy caches it: a misdelivered answer would be stored and re-served
    body = (
        f'{{"id":"{run_id}","type":"llm","status":"success",'
        f'"endedAt":"2026-11-01T10:00:03.250Z","answers":"{tag}"}}'
    ).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


class _InjectingConnection(asyncio.Protocol):
    """One upstream connection: answers each request, then injects on it once it goes idle."""

    def __init__(self, owner: InjectingUpstream) -> None:
        self._owner = owner
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._idle_since: object | None = None  # a token per answer, dropped by any byte read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._owner.open.add(transport)
        self._owner.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._owner.open.discard(self._transport)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._idle_since = None
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:  # GETs only: no request body to wait for
            head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
            self._answer(head.decode("latin-1"))

    def _answer(self, head: str) -> None:
        request_line, *lines = head.split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        fields = dict(line.split(":", 1) for line in lines)
        headers = {name.strip().lower(): value.strip() for name, value in fields.items()}
        tag = answer_tag(
            method, target, headers.get("authorization", ""), headers.get("x-api-key", "")
        )
        assert self._transport is not None
        self._transport.write(_json_answer(tag, target.rsplit("/", 1)[-1]))
        self._owner.answers += 1
        token = self._idle_since = object()
        asyncio.get_running_loop().call_later(self._owner.delay, self._inject, token)

    def _inject(self, token: object) -> None:
        # only on a connection that stayed idle since the answer: one with a request in flight
        # cannot tell an injected answer from the real one (HTTP/1.1 has no request ids)
        if self._transport is None or self._idle_since is not token:
            return
        self._transport.write(_json_answer(f"poison-{self._owner.injections + 1}", "poison"))
        self._owner.injections += 1


class InjectingUpstream:
    """A hostile HTTP/1.1 upstream on loopback, in its own thread: it answers each request with
    a settled run whose `answers` names the request (answer_tag), and `delay` seconds after an
    answer writes one more complete 200 (`answers` "poison-N") on the then idle connection."""

    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay
        self.answers = 0
        self.injections = 0
        self.connections = 0
        self.open: set[asyncio.Transport] = set()
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        server = await self._loop.create_server(lambda: _InjectingConnection(self), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._ready.set()
        async with server:
            await self._stopped
            server.close()
            for transport in list(self.open):
                transport.close()

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the injecting upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set_result, None)
        self._thread.join(timeout=10)
