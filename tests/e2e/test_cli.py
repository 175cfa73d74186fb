"""The console script: runs with no configuration; a bad setting stops it with one clear line;
its flags answer without serving, or override the environment."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from config import Settings
from tests.fake_lunary import FakeLunary
from tests.servers import ProxyProcess, RedisServer, ServerThread, TlsFiles, free_port


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
    settings = {name: bad_value, "PROXY_SCOPE_SECRET": "do-not-print-me"}
    result = run_cli(cwd=tmp_path, timeout=30, **settings)

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


def run_cli(
    *args: str, cwd: Path, timeout: float = 30, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`python -m proxy ARGS` with only `settings` as PROXY_* variables; it must end by itself."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env=clean_env(**settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check_lines(stdout: str) -> dict[str, str]:
    """`--connect`'s check lines by name: {"redis": "ok", "upstream tls": "FAIL", ...}."""
    found = {}
    for line in stdout.splitlines():
        outcome, _, rest = line.partition(" ")
        if outcome in ("ok", "FAIL", "skip"):
            name = rest.strip().split(" ")[0]
            if name == "upstream":
                name = " ".join(rest.split()[:2])
            found[name] = outcome
    return found


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], "usage: lunary-cache-proxy"),
        (["-h"], "PROXY_UPSTREAM_URL=https://api.lunary.ai"),
        (["--version"], f"lunary-cache-proxy {version('lunary-cache-proxy')}\n"),
        (["--check-config"], "configuration ok\n"),
        (["--print-config"], "PROXY_HOST=127.0.0.1\n"),
    ],
)
def test_answering_commands_exit_by_themselves_and_bind_nothing(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    """The port is held by the test: a command that tried to serve would fail to bind it and
    say so on stderr, however briefly it tried."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            env=clean_env(PROXY_PORT=str(port), PROXY_HOST="127.0.0.1"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=10,  # exits by itself
        )

    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert result.stderr == ""  # no log line either: nothing was started


def test_help_lists_every_setting(tmp_path: Path) -> None:
    stdout = run_cli("--help", cwd=tmp_path).stdout
    for name, field in Settings.model_fields.items():
        assert f"PROXY_{name.upper()}=" in stdout
        assert str(field.description) in stdout


def test_an_unknown_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("--bogus", cwd=tmp_path, timeout=10)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: lunary-cache-proxy")
    assert "unrecognized arguments: --bogus" in result.stderr


@pytest.mark.parametrize(
    ("args", "settings", "variable"),
    [
        ([], {"PROXY_CACHE_TTL": "-1"}, "PROXY_CACHE_TTL"),
        (["--connect"], {"PROXY_REDIS_URL": "memcached://127.0.0.1:1"}, "PROXY_REDIS_URL"),
        (["--port", "99999"], {}, "PROXY_PORT"),
        (["--upstream", "ftp://example.com"], {}, "PROXY_UPSTREAM_URL"),
        (["--workers", "0"], {"PROXY_WORKERS": "2"}, "PROXY_WORKERS"),
    ],
)
def test_check_config_exits_2_with_one_line_naming_the_variable(
    tmp_path: Path, args: list[str], settings: dict[str, str], variable: str
) -> None:
    result = run_cli("--check-config", *args, cwd=tmp_path, timeout=10, **settings)

    assert result.returncode == 2
    assert result.stdout == ""  # no summary, no checks
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"lunary-cache-proxy: configuration error: {variable}: ")


def test_check_config_connect_reaches_redis_and_the_upstream(
    tmp_path: Path, redis_url: str, upstream: ServerThread
) -> None:
    result = run_cli(
        "--check-config",
        "--connect",
        cwd=tmp_path,
        PROXY_UPSTREAM_URL=upstream.url,
        PROXY_REDIS_URL=redis_url,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("configuration ok\n")
    assert check_lines(result.stdout) == {
        "upstream resolve": "ok",
        "upstream connect": "ok",
        "upstream tls": "skip",  # an http:// upstream
        "redis": "ok",
    }
    assert f"{redis_url} answered PING" in result.stdout


def test_check_config_connect_fails_on_dead_ports_and_exits_1(tmp_path: Path) -> None:
    dead_upstream, dead_redis = free_port(), free_port()
    started = time.monotonic()
    result = run_cli(
        "--check-config",
        "--connect",
        cwd=tmp_path,
        PROXY_UPSTREAM_URL=f"http://127.0.0.1:{dead_upstream}",
        PROXY_REDIS_URL=f"redis://127.0.0.1:{dead_redis}/0",
    )

    assert result.returncode == 1
    assert time.monotonic() - started < 15
    assert check_lines(result.stdout) == {
        "upstream resolve": "ok",
        "upstream connect": "FAIL",
        "upstream tls": "skip",
        "redis": "FAIL",
    }
    assert f"FAIL upstream connect  127.0.0.1:{dead_upstream}: Connection refused" in result.stdout
    assert "Traceback" not in result.stderr


def test_check_config_connect_fails_on_a_host_that_does_not_resolve(tmp_path: Path) -> None:
    result = run_cli(
        "--check-config", "--connect", "--upstream", "http://no-such-host.invalid", cwd=tmp_path
    )

    assert result.returncode == 1
    assert check_lines(result.stdout) == {
        "upstream resolve": "FAIL",
        "upstream connect": "skip",
        "upstream tls": "skip",
        "redis": "skip",  # no PROXY_REDIS_URL: the in-memory store
    }


def test_a_redis_password_is_never_shown(
    tmp_path: Path, redis_server: RedisServer, redis_url: str
) -> None:
    password, wrong = "s3cret-pw-0042", "wrong-pw-0043"
    admin = redis_server.client()
    admin.acl_setuser(
        "cli-test", enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"]
    )
    base = f"127.0.0.1:{redis_server.port}/0"
    try:
        printed = run_cli(
            "--print-config", cwd=tmp_path, PROXY_REDIS_URL=f"redis://cli-test:{password}@{base}"
        )
        flagged = run_cli(
            "--print-config",
            "--redis-url",
            f"redis://:{password}@{base}?password={password}",
            cwd=tmp_path,
        )
        connected = run_cli(
            "--check-config",
            "--connect",
            "--upstream",
            f"http://127.0.0.1:{free_port()}",
            cwd=tmp_path,
            PROXY_REDIS_URL=f"redis://cli-test:{password}@{base}",
        )
        refused = run_cli(
            "--check-config",
            "--connect",
            "--upstream",
            f"http://127.0.0.1:{free_port()}",
            cwd=tmp_path,
            PROXY_REDIS_URL=f"redis://cli-test:{wrong}@{base}",
        )
    finally:
        admin.acl_deluser("cli-test")

    assert f"PROXY_REDIS_URL=redis://cli-test:***@{base}\n" in printed.stdout
    assert f"PROXY_REDIS_URL=redis://:***@{base}?password=***\n" in flagged.stdout
    assert check_lines(connected.stdout)["redis"] == "ok"
    assert check_lines(refused.stdout)["redis"] == "FAIL"
    assert "password" in refused.stdout  # the server's reason: a wrong user-password pair
    for result in (printed, flagged, connected, refused):
        assert password not in result.stdout + result.stderr
        assert wrong not in result.stdout + result.stderr


def test_check_config_connect_speaks_tls_to_redis(tmp_path: Path, tls_redis: RedisServer) -> None:
    result = run_cli(
        "--check-config", "--connect", "--upstream", f"http://127.0.0.1:{free_port()}",
        cwd=tmp_path, PROXY_REDIS_URL=tls_redis.url,
    )  # fmt: skip

    assert check_lines(result.stdout)["redis"] == "ok", result.stdout
    assert f"{tls_redis.url} answered PING" in result.stdout


def test_check_config_connect_verifies_the_upstream_certificate(
    tmp_path: Path, tls_upstream: ServerThread, tls_files: TlsFiles
) -> None:
    url = f"https://127.0.0.1:{tls_upstream.port}"
    untrusted = run_cli("--check-config", "--connect", "--upstream", url, cwd=tmp_path)
    trusted = run_cli(
        "--check-config", "--connect", "--upstream", url,
        cwd=tmp_path, PROXY_UPSTREAM_CA_FILE=tls_files.ca,
    )  # fmt: skip

    assert untrusted.returncode == 1
    assert check_lines(untrusted.stdout)["upstream tls"] == "FAIL"
    assert "FAIL upstream tls      127.0.0.1: certificate verify failed: " in untrusted.stdout
    assert trusted.returncode == 0, trusted.stdout
    assert check_lines(trusted.stdout)["upstream tls"] == "ok"
    assert "certificate verified for 127.0.0.1" in trusted.stdout


def test_flags_override_the_environment_for_a_served_proxy(
    tmp_path: Path, fake: FakeLunary, upstream: ServerThread
) -> None:
    """--port and --upstream beat PROXY_PORT and PROXY_UPSTREAM_URL, in every worker: uvicorn's
    workers build their apps from the environment, where the flags were exported."""
    key, run = fake.add_key(), fake.add_run()
    env_port, flag_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--port", str(flag_port), "--upstream", upstream.url,
         "--workers", "2"],
        env=clean_env(
            PROXY_HOST="127.0.0.1",
            PROXY_PORT=str(env_port),
            PROXY_UPSTREAM_URL=f"http://127.0.0.1:{free_port()}",  # nothing there
            PROXY_LOG_FORMAT="console",
        ),
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        health = first_health(flag_port)
        url = f"http://127.0.0.1:{flag_port}/v1/runs/{run}"
        # new connections each: the kernel spreads them over both workers
        answers = [httpx.get(url, headers={"X-API-Key": key}) for _ in range(6)]
        env_port_listening = listening(env_port)
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=15)

    assert health is not None
    assert health.status_code == 200
    assert not env_port_listening
    assert [a.status_code for a in answers] == [200] * 6
    assert "HIT" in [a.headers["x-cache"] for a in answers]
    assert 1 <= fake.count(run) <= 2  # filled from the upstream the flag named, once a worker
