"""What the benchmarks share: processes started and stopped by PID, nginx with its own config,
wrk driven by a generated Lua script that reports one JSON line, a raw HTTP/1.1 client for load
scripts that need more than GET, and per-process readings (CPU, RSS). Loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.prometheus import Samples, samples
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]

# wrk calls done() once with the totals; latencies are in microseconds.
WRK_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: apt-get install -y {' '.join(missing)}")


@dataclass
class Service:
    """A process this script started, listening on `url`."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: str  # what it wrote to stdout and stderr, until it stops

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Everything it has logged so far (the file is removed when it stops)."""
        return Path(self.log_path).read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def service(
    name: str, command: Sequence[str], port: int, env: dict[str, str] | None = None
) -> Iterator[Service]:
    """Start `command`, wait until it answers HTTP on `port`, and stop it by its PID after.

    It gets this environment without any PROXY_* setting of the shell's, plus `env`: a
    benchmark's proxies are configured by the benchmark alone.
    """
    log = tempfile.NamedTemporaryFile(prefix=f"lcp-bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    process = subprocess.Popen(
        command, env={**clean, **(env or {})}, stdout=log, stderr=log, cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                httpx.get(url + "/healthz", timeout=1)
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: see {log.name}")
            time.sleep(0.05)
        yield Service(name, url, process, log.name)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        log.close()
        os.unlink(log.name)


def python_service(
    name: str, module: str, port: int, *args: str, env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[Service]:
    return service(name, [sys.executable, "-m", module, *args], port, env)


def origin_service(
    port: int,
    *,
    latency: float = 0.0,
    body_bytes: int = 2048,
    world: str | None = None,
    read_latency: float = 0.0,
) -> contextlib.AbstractContextManager[Service]:
    """The fast fake Lunary (benchmarks/origin.py) in its own process; `world`: marker mode."""
    options = ["--port", str(port), "--latency", str(latency), "--body-bytes", str(body_bytes)]
    if world is not None:
        options += ["--world", world]
    if read_latency:
        options += ["--read-latency", str(read_latency)]
    return python_service("origin", "benchmarks.origin", port, *options)


# Replicas (and benchmark runs) that share one Redis must share the scope secret too.
SCOPE_SECRET = "benchmark-scope-secret-0123456789abcdef"


def shared_proxy(
    port: int,
    origin_url: str,
    redis_url: str,
    *,
    module: str = "proxy",
    command: Sequence[str] | None = None,
    name: str | None = None,
    **settings: str,
) -> contextlib.AbstractContextManager[Service]:
    """The proxy in front of `origin_url`, caching in the Redis at `redis_url`; `module` is
    what `python -m` runs (benchmarks/stock_server.py serves the same app another way), or
    `command` the whole command line (benchmarks/revisions.py runs another tree's proxy);
    `settings` are PROXY_* settings without the prefix (`cache_ttl="3"`)."""
    env = {
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(port),
        "PROXY_UPSTREAM_URL": origin_url,
        "PROXY_REDIS_URL": redis_url,
        "PROXY_SCOPE_SECRET": SCOPE_SECRET,
    }
    env.update({f"PROXY_{name.upper()}": value for name, value in settings.items()})
    argv = [sys.executable, "-m", module] if command is None else list(command)
    return service(name or module.rsplit(".", 1)[-1], argv, port, env)


NGINX_CONF = """
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {dir}/access.log;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  proxy_cache_path {dir}/cache levels=1:2 keys_zone=runs:32m max_size=2g inactive=10m
                   use_temp_path=off;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /healthz {{ return 200 "ok"; }}
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache runs;
      # like the proxy's key: the URI and both credential headers
      proxy_cache_key "$request_uri|$http_authorization|$http_x_api_key";
      proxy_cache_valid 200 {fresh};
      proxy_cache_valid 404 5s;
      proxy_cache_lock on;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}
"""


@contextlib.contextmanager
def nginx(port: int, origin_port: int, fresh: str = "60s") -> Iterator[Service]:
    """Debian's nginx with proxy_cache in front of the origin, in a directory of its own."""
    require("nginx")
    directory = tempfile.mkdtemp(prefix="lcp-bench-nginx-")
    user = "user root;" if os.geteuid() == 0 else ""  # workers must write the cache directory
    conf = Path(directory, "nginx.conf")
    conf.write_text(
        NGINX_CONF.format(dir=directory, port=port, origin_port=origin_port, user=user, fresh=fresh)
    )
    try:
        command = ["nginx", "-p", directory, "-c", str(conf), "-g", "daemon off;"]
        with service("nginx", command, port) as running:
            yield running
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk(url: str, lua: str, *, connections: int, seconds: float, threads: int = 2) -> WrkResult:
    """Run wrk with `lua` (which defines request()) and the JSON-reporting done()."""
    require("wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua + WRK_DONE)
    command = [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds:g}s",
        "--timeout", "10s", "-s", script.name, url,
    ]  # fmt: skip
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    finally:
        os.unlink(script.name)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    errors = sum(report[name] for name in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=report["requests"],
        seconds=report["duration_us"] / 1e6,
        errors=errors,
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
    )


def measured_wrk(
    url: str, lua: str, pids: Sequence[int], *, connections: int, seconds: float
) -> tuple[WrkResult, list[float]]:
    """wrk against `url`, and the CPU seconds each of `pids` spent meanwhile."""
    before = [cpu_seconds(pid) for pid in pids]
    result = wrk(url, lua, connections=connections, seconds=seconds)
    return result, [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def cycling_requests(targets: Sequence[tuple[str, dict[str, str]]]) -> str:
    """Lua for wrk: each thread walks the (path, headers) list from its own offset."""

    def row(path: str, headers: dict[str, str]) -> str:
        fields = ", ".join(f"[{lua_string(k)}]={lua_string(v)}" for k, v in headers.items())
        return f"{{{lua_string(path)}, {{{fields}}}}}"

    rows = ",\n".join(row(path, headers) for path, headers in targets)
    return f"""
local targets = {{
{rows}
}}
local counter = 0
local started = 0
function setup(thread)
  started = started + 1
  thread:set("offset", started * 97)
end
function init(args)
  counter = offset or 0
end
function request()
  counter = counter + 1
  local target = targets[(counter % #targets) + 1]
  return wrk.format("GET", target[1], target[2])
end
"""


def proxy_counters(url: str) -> dict[str, float]:
    """Cache results and store errors so far, from the proxy's own metrics."""
    counters: dict[str, float] = {}
    for (name, label_set), value in metric_samples(url).items():
        labels = dict(label_set)
        if name == "lunary_proxy_requests_total":
            key = labels["cache"]
        elif name == "lunary_proxy_store_errors_total":
            key = "store error " + labels["operation"]
        else:
            continue
        counters[key] = counters.get(key, 0.0) + value
    return counters


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def children(pid: int) -> list[int]:
    """Child processes of `pid`, without multiprocessing's helper (its resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(child) for child in path.read_text().split()] if path.exists() else []
    return [
        child
        for child in found
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def in_turns(names: Sequence[str], round_number: int) -> list[str]:
    """`names` rotated by the round, so each system takes each place in the order in turn and
    no one of them always runs first (on a cold machine) or last (on a hot one)."""
    start = round_number % len(names)
    return [*names[start:], *names[:start]]


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def rss_kib(pid: int) -> int:
    """Resident memory of one process in KiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def metric_samples(url: str) -> Samples:
    """Every sample of a proxy's `/metrics` page, by name and labels."""
    return samples(httpx.get(url + "/metrics", timeout=5).text)
