"""The console script: runs with no configuration; a bad setting stops it with one clear line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, ServerThread, free_port


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    env.update(settings)
    return env


def first_health(port: int, wait: float = 15) -> httpx.Response | None:
    """The first answer of /healthz on `port` while the server starts, or None after `wait`."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz")
        except httpx.TransportError:
            time.sleep(0.1)
    return None


def test_runs_with_no_configuration_on_the_memory_store(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy"],
        env=clean_env(PROXY_PORT=str(port), PROXY_HOST="127.0.0.1"),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health = first_health(port)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)

    assert health is not None
    assert health.status_code == 200
    assert ready.status_code == 200
    store_lines = [line for line in stderr.splitlines() if "in-memory" in line]
    assert len(store_lines) == 1
    assert "https://api.lunary.ai" in store_lines[0]
    assert "PROXY_SCOPE_SECRET is not set" in stderr
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why it ended
    assert "Application shutdown complete" in stderr
    assert process.returncode in (0, -signal.SIGTERM)


def test_console_script_serves_cached_reads(tmp_path: Path) -> None:
    script = shutil.which("lunary-cache-proxy", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is not installed"
    fake = FakeLunary()
    key, run = fake.add_key(), fake.add_run()
    port = free_port()
    with ServerThread(fake) as upstream:
        process = subprocess.Popen(
            [script],
            env=clean_env(
                PROXY_PORT=str(port),
                PROXY_HOST="127.0.0.1",
                PROXY_UPSTREAM_URL=upstream.url,
                PROXY_LOG_FORMAT="console",
            ),
            cwd=tmp_path,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "proxy did not start"
                    time.sleep(0.1)
            url = f"http://127.0.0.1:{port}/v1/runs/{run}"
            answers = [httpx.get(url, headers={"X-API-Key": key}) for _ in range(2)]
        finally:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=15)

    assert [a.headers["x-cache"] for a in answers] == ["MISS", "HIT"]
    assert fake.count(run) == 1


@pytest.mark.parametrize(
    ("name", "bad_value"),
    [
        ("PROXY_CACHE_TTL", "-1"),
        ("PROXY_NEGATIVE_TTL", "soon"),
        ("PROXY_UPSTREAM_URL", "ftp://example.com"),
        ("PROXY_UPSTREAM_URL", "not a url"),
        ("PROXY_REDIS_URL", "memcached://127.0.0.1:11211"),
        ("PROXY_PORT", "99999"),
        ("PROXY_WORKERS", "0"),
        ("PROXY_LOG_FORMAT", "xml"),
        ("PROXY_REDIS_TIMEOUT", "0"),
    ],
)
def test_invalid_setting_stops_start_up_with_one_line(
    tmp_path: Path, name: str, bad_value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy"],
        env=clean_env(**{name: bad_value, "PROXY_SCOPE_SECRET": "do-not-print-me"}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr
    assert "do-not-print-me" not in result.stderr


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PROXY_CACHE_TTL=-5\n")

    result = subprocess.run(
        [sys.executable, "-m", "proxy"],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert "PROXY_CACHE_TTL" in result.stderr


def test_workers_build_their_apps_from_the_environment_and_share_one_scope_secret(
    redis_url: str,
) -> None:
    """PROXY_WORKERS=2: uvicorn's factory builds each worker's app; with no secret set, the one
    the console script generates is shared, so an entry one worker filled is a hit in the other."""
    fake = FakeLunary()
    key, run = fake.add_key(), fake.add_run()
    with (
        ServerThread(fake) as upstream,
        ProxyProcess(
            PROXY_WORKERS="2",
            PROXY_UPSTREAM_URL=upstream.url,
            PROXY_REDIS_URL=redis_url,
            PROXY_LOG_FORMAT="console",
        ) as proxy,
    ):
        url = f"{proxy.url}/v1/runs/{run}"
        # new connections each: the kernel spreads them over both workers' accept queues
        answers = [httpx.get(url, headers={"X-API-Key": key}) for _ in range(20)]
        log = proxy.log()

    assert log.count("lunary-cache-proxy ready") == 2  # one lifespan per worker
    assert log.count("the workers share a random one") == 1
    assert "using a random one" not in log  # no worker made a secret of its own
    assert [a.status_code for a in answers] == [200] * 20
    assert [a.headers["x-cache"] for a in answers] == ["MISS"] + ["HIT"] * 19
    assert fake.count(run) == 1


def test_uvicorns_own_command_line_serves_the_app_factory(tmp_path: Path) -> None:
    port = free_port()
    factory = "proxy.web.app:app_from_environment"
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port)],
        env=clean_env(),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health = first_health(port)
        missing = httpx.get(f"http://127.0.0.1:{port}/admin/purge")  # no token set: off
    finally:
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)

    assert health is not None
    assert health.status_code == 200
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/json")
    assert "lunary-cache-proxy ready" in stderr
