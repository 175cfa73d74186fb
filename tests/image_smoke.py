"""Checks a built container image for real: run by scripts/image-smoke after the buildah build.

The container runs under podman on the host network, in front of a fake Lunary and a real
redis-server on loopback. Each check prints one line; the first failure ends the run non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.fake_lunary import FakeLunary
from tests.servers import RedisServer, ServerThread, free_port

# Modules that must not be importable in a runtime image, by the app's interpreter or the base's:
# installers, build backends, test and lint tools, our tests.
FORBIDDEN_MODULES = ("pip", "setuptools", "hatchling", "pytest", "mypy", "ruff", "tests")
BASE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SmokeFailure(Exception):
    """One check did not hold; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)
    print(f"ok   {message}", flush=True)


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def run_flags() -> list[str]:
    """The podman run flags that work on our machines (shared/TOOLING.md)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        "--runtime", "runc",
        "--network", "host",
        "--ulimit", f"nofile={soft}:{hard}",
        "--ulimit", "nproc=32768:32768",
        "--health-interval", "disable",  # no systemd timers here; run the check by hand below
        # As the Helm chart runs it: read-only root, no capabilities, no privilege escalation.
        "--read-only",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
    ]  # fmt: skip


@contextmanager
def container(image: str, env: dict[str, str]) -> Iterator[str]:
    env_flags = [flag for name, value in env.items() for flag in ("--env", f"{name}={value}")]
    started = podman("run", "--detach", *run_flags(), *env_flags, image)
    if started.returncode != 0:
        raise SmokeFailure(f"podman run failed: {started.stderr.strip()}")
    name = started.stdout.strip()
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "2", name)


def wait_healthy(url: str, name: str, deadline_seconds: float = 30) -> httpx.Response:
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            return httpx.get(f"{url}/healthz", timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                logs = podman("logs", name).stderr[-2000:]
                raise SmokeFailure(f"/healthz never answered; container logs:\n{logs}") from None
            time.sleep(0.2)


def check_image_config(image: str) -> None:
    inspected = podman("image", "inspect", image)
    check(inspected.returncode == 0, f"image {image} exists")
    described = json.loads(inspected.stdout)[0]
    config = described["Config"]
    user = config.get("User")
    check(user == "10001:10001", f"image user is 10001:10001 (got {user!r})")
    entrypoint = config.get("Entrypoint")
    check(entrypoint == ["lunary-cache-proxy"], f"exec-form entrypoint (got {entrypoint!r})")
    healthcheck = described.get("Healthcheck") or config.get("Healthcheck") or {}
    check(
        "/healthz" in " ".join(healthcheck.get("Test", [])), "image has a HEALTHCHECK on /healthz"
    )
    env_names = {entry.split("=", 1)[0] for entry in config.get("Env", [])}
    leaked = env_names & {"PROXY_SCOPE_SECRET", "PROXY_ADMIN_TOKEN", "PROXY_REDIS_URL"}
    check(not leaked, f"no secret or store address in the image env (found {sorted(leaked)})")


def check_running(name: str, url: str, fake: FakeLunary, redis: RedisServer) -> None:
    status = podman("exec", name, "cat", "/proc/1/status").stdout
    uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
    check(bool(uids) and "0" not in uids, f"PID 1 runs as a non-root user (Uid: {' '.join(uids)})")

    health = podman("healthcheck", "run", name)
    check(health.returncode == 0, f"the image HEALTHCHECK passes ({health.stdout.strip()})")

    probe = "import importlib.util as u; print(' '.join(m for m in %r if u.find_spec(m)))"
    for interpreter in ("app", "base"):
        env = () if interpreter == "app" else ("env", BASE_PATH)
        found = podman("exec", name, *env, "python3", "-c", probe % (FORBIDDEN_MODULES,))
        check(found.returncode == 0, f"the {interpreter} python3 runs ({found.stderr.strip()})")
        leftovers = found.stdout.split()
        check(
            not leftovers,
            f"no build, test or install tools for the {interpreter} python3 {leftovers}",
        )
    # an exec that failed would print nothing too: only a shell that ran may say "none"
    searched = podman("exec", name, "sh", "-c", "command -v pip pip3 gcc cc; echo searched")
    commands = searched.stdout.split()
    check(commands == ["searched"], f"no pip or compiler on PATH (found {commands[:-1]})")
    # buildah leaves an empty mount point where the build borrowed the host's pip config.
    pip_config = podman("exec", name, "test", "-s", "/etc/pip.conf").returncode
    check(pip_config == 1, f"no host pip configuration in the image (test -s: {pip_config})")

    key = fake.add_key()
    run_id = fake.add_run(marker="smoke")
    headers = {"Authorization": f"Bearer {key}"}
    first = httpx.get(f"{url}/v1/runs/{run_id}", headers=headers, timeout=10)
    second = httpx.get(f"{url}/v1/runs/{run_id}", headers=headers, timeout=10)
    check(first.status_code == 200 and first.json()["id"] == run_id, "a run read goes through")
    check(first.headers.get("x-cache") == "MISS", f"first read: {first.headers.get('x-cache')}")
    check(second.headers.get("x-cache") == "HIT", f"second read: {second.headers.get('x-cache')}")
    check(second.content == first.content, "the HIT serves the same body")
    check(fake.count(run_id) == 1, f"the upstream was asked once (asked {fake.count(run_id)})")

    client = redis.client()
    stored = list(client.scan_iter(match="lcp:1:*"))
    check(
        any(run_id.encode() in raw for raw in stored),
        f"the entry lives in Redis ({len(stored)} keys)",
    )
    values = b"".join(client.dump(raw) or b"" for raw in stored)
    check(key.encode() not in b"".join(stored) + values, "the raw API key is nowhere in Redis")

    started = time.monotonic()
    stopped = podman("stop", "--time", "10", name, timeout=30)
    took = time.monotonic() - started
    exit_code = podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
    check(stopped.returncode == 0 and took < 9, f"SIGTERM stops it gracefully ({took:.1f} s)")
    check(exit_code == "0", f"it exits with status 0 (got {exit_code})")
    logs = podman("logs", name)
    check("Traceback" not in logs.stdout + logs.stderr, "no traceback in the container logs")
    check(key not in logs.stdout + logs.stderr, "the raw API key is not in the container logs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image", help="the image to check, e.g. localhost/lunary-cache-proxy:smoke")
    image: str = parser.parse_args().image

    fake = FakeLunary()
    redis = RedisServer()
    redis.start()
    port = free_port()
    try:
        check_image_config(image)
        with ServerThread(fake) as upstream:
            env = {
                "PROXY_PORT": str(port),
                "PROXY_UPSTREAM_URL": upstream.url,
                "PROXY_REDIS_URL": redis.url,
                "PROXY_SCOPE_SECRET": os.urandom(16).hex(),
            }
            with container(image, env) as name:
                url = f"http://127.0.0.1:{port}"
                health = wait_healthy(url, name)
                check(health.status_code == 200, f"/healthz answers 200 (got {health.status_code})")
                ready = httpx.get(f"{url}/readyz", timeout=5)
                check(ready.status_code == 200, f"/readyz with Redis up: {ready.status_code}")
                check_running(name, url, fake, redis)
    except SmokeFailure as failure:
        print(f"FAIL {failure}", file=sys.stderr, flush=True)
        return 1
    finally:
        redis.close()
    print("image smoke test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
