"""The try-out files, examples/compose.yaml and examples/try-with-podman.sh: they parse, the
compose tools installed here accept them, the proxy settings they give are real and valid, and
the two set up the same thing. Nothing here starts a container."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from config.settings import ENV_PREFIX, ConfigError, Settings, load_settings
from tests.tools import missing_tool, required_tool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "examples" / "compose.yaml"
SCRIPT = ROOT / "examples" / "try-with-podman.sh"
ALL_SETTINGS = {f"{ENV_PREFIX}{name}".upper() for name in Settings.model_fields}

# What a user's shell may hand the files: nothing, or every variable they read.
USER_ENVS = {
    "unset": {},
    "set": {"LUNARY_URL": "http://lunary.internal:3333", "PROXY_SCOPE_SECRET": "s3cr3t" * 6},
}

# The interpolation both compose tools agree on: `$$`, `${NAME}`, `${NAME:-default}` with a
# non-empty default. podman-compose 1.0.3 leaves `${NAME:-}` in place, literally.
VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_]\w*)(?::-(?P<default>[^}]+))?\}|(?P<other>.?))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """compose's variable substitution over a parsed file; any other `$` form is an error."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["name"] is None:
            raise ValueError(f"unsupported interpolation at {match[0]!r} in {value!r}")
        return env.get(match["name"]) or match["default"] or ""

    return VARIABLE.sub(substitute, value)


def compose(user_env: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return dict(interpolate(document, user_env))


def environment(service: dict[str, Any], user_env: dict[str, str]) -> dict[str, str]:
    """A service's environment as its container gets it: a name without a value is passed on
    from the user's environment when set there, else left out."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    resolved = {name: value if value is None else str(value) for name, value in raw.items()}
    return {
        name: value if value is not None else user_env[name]
        for name, value in resolved.items()
        if value is not None or name in user_env
    }


def proxy_environment(user_env: dict[str, str]) -> dict[str, str]:
    return environment(compose(user_env)["services"]["proxy"], user_env)


def checked_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings the proxy would start with under `env`, read the proxy's own way. Unknown
    PROXY_* names fail too: pydantic-settings ignores them, so a typo would go unnoticed."""
    unknown = {name for name in env if name.startswith(ENV_PREFIX)} - ALL_SETTINGS
    if unknown:
        raise ConfigError(f"not settings: {sorted(unknown)}")
    for name in ALL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def published(port: str | dict[str, Any]) -> tuple[str, int, int]:
    """(host address, host port, container port) of one `ports` entry, short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), int(port["published"]), int(port["target"])
    *address, host_port, container_port = port.removesuffix("/tcp").split(":")
    return ":".join(address), int(host_port or 0), int(container_port)


def tool_env(user_env: dict[str, str]) -> dict[str, str]:
    """A clean environment for a tool, so the developer's own LUNARY_URL cannot leak in."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), **user_env}


# -- compose.yaml on its own --------------------------------------------------------------------


def test_the_interpolation_check_refuses_what_podman_compose_would_pass_literally() -> None:
    assert interpolate("${A:-x}/${B}/$$", {"B": "b"}) == "x/b/$"
    for unsupported in ("${A:-}", "${A?required}", "$A"):
        with pytest.raises(ValueError, match="unsupported interpolation"):
            interpolate(unsupported, {})


def test_the_file_is_two_services_with_only_supported_interpolation() -> None:
    document = compose({})
    assert set(document["services"]) == {"proxy", "redis"}


@pytest.mark.parametrize("user_env", USER_ENVS.values(), ids=USER_ENVS.keys())
def test_the_proxy_environment_is_valid_settings(
    user_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file here
    env = proxy_environment(user_env)
    assert all(name.startswith(ENV_PREFIX) for name in env)
    settings = checked_settings(env, monkeypatch)
    assert settings.upstream_url == user_env.get("LUNARY_URL", "https://api.lunary.ai")
    # unset, the proxy makes a random secret and warns: never an empty or literal placeholder
    assert settings.scope_secret.get_secret_value() == user_env.get("PROXY_SCOPE_SECRET", "")
    assert ("PROXY_SCOPE_SECRET" in env) == ("PROXY_SCOPE_SECRET" in user_env)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"PROXY_CACHE_TLL": "30"}, "not settings"),
        ({"PROXY_PORT": "80800"}, "PROXY_PORT"),
        ({"PROXY_REDIS_URL": "redis//redis:6379"}, "PROXY_REDIS_URL"),
    ],
)
def test_a_typo_or_a_bad_value_fails_the_check(
    change: dict[str, str], problem: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=problem):
        checked_settings({**proxy_environment({}), **change}, monkeypatch)


def test_the_proxy_is_published_on_loopback_at_its_own_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = checked_settings(proxy_environment({}), monkeypatch)
    services = compose({})["services"]
    assert [published(port) for port in services["proxy"]["ports"]] == [
        ("127.0.0.1", settings.port, settings.port)
    ]
    assert "ports" not in services["redis"]  # only the proxy reaches it
    health = " ".join(services["proxy"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{settings.port}/healthz" in health


def test_the_proxy_uses_the_redis_service_once_it_is_healthy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = checked_settings(proxy_environment({}), monkeypatch)
    services = compose({})["services"]
    host = urlsplit(settings.redis_url).hostname
    assert host in services
    assert services["proxy"]["depends_on"] == {host: {"condition": "service_healthy"}}
    assert "PONG" in " ".join(services[host]["healthcheck"]["test"])
    command = services[host]["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"


def test_the_image_is_built_from_this_checkout() -> None:
    build = compose({})["services"]["proxy"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build.get("dockerfile", "Dockerfile")).is_file()


def test_the_proxy_runs_as_the_chart_runs_it() -> None:
    proxy = compose({})["services"]["proxy"]
    assert proxy["read_only"] is True
    assert "/tmp" in proxy["tmpfs"]  # request bodies over 1 MiB are spooled there
    assert proxy["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in proxy["security_opt"]
    assert proxy["restart"] == "unless-stopped"


# -- the compose tools --------------------------------------------------------------------------


def docker_compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.parametrize("user_env", USER_ENVS.values(), ids=USER_ENVS.keys())
def test_docker_compose_accepts_it_and_interpolates_it_the_same(user_env: dict[str, str]) -> None:
    tool = docker_compose()
    if tool is None:
        missing_tool("neither docker-compose nor the docker compose plugin is installed")
        return
    result = subprocess.run(
        [*tool, "--file", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=tool_env(user_env),
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert environment(services["proxy"], user_env) == proxy_environment(user_env)
    assert [published(port) for port in services["proxy"]["ports"]] == [
        published(port) for port in compose(user_env)["services"]["proxy"]["ports"]
    ]


@pytest.mark.parametrize("user_env", USER_ENVS.values(), ids=USER_ENVS.keys())
def test_podman_compose_accepts_it_and_interpolates_it_the_same(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    """podman-compose 1.0.3 has no `config`: its dry run prints the podman commands instead, and
    a stub podman answers its queries (a real one would create the network even then)."""
    required_tool("podman-compose", "Debian package podman-compose")
    stub = tmp_path / "podman"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    result = subprocess.run(
        ["podman-compose", "--dry-run", "--podman-path", str(stub), "--file", str(COMPOSE), "up"],
        capture_output=True,
        text=True,
        timeout=60,
        env=tool_env(user_env),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "compose.service=proxy" in line]
    assert len(lines) == 1, result.stdout
    words = lines[0].split()  # printed unquoted: fine for these values, which have no spaces
    passed = [words[at + 1] for at, word in enumerate(words) if word == "-e"]
    env = {name: value for name, _, value in (item.partition("=") for item in passed)}
    # podman itself passes a bare name on from the environment podman-compose runs in
    env = {
        name: value or user_env[name] for name, value in env.items() if value or name in user_env
    }
    assert env == proxy_environment(user_env)
    ports = [words[at + 1] for at, word in enumerate(words) if word == "-p"]
    assert ports == compose(user_env)["services"]["proxy"]["ports"]


# -- try-with-podman.sh -------------------------------------------------------------------------


def test_the_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_shellcheck_finds_nothing() -> None:
    shellcheck = required_tool("shellcheck", "Debian package shellcheck")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def dry_run(user_env: dict[str, str], *args: str) -> list[list[str]]:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=tool_env(user_env),
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


SWITCHES = frozenset({"--detach", "--read-only"})


def podman_run(words: list[str]) -> tuple[dict[str, list[str]], str, list[str]]:
    """A `podman run` command's options (each with its values), image and command."""
    options: dict[str, list[str]] = {}
    rest = iter(words[2:])
    for word in rest:
        if not word.startswith("-"):
            return options, word, list(rest)
        options.setdefault(word, []).append("" if word in SWITCHES else next(rest))
    raise AssertionError(f"no image in {words}")


def script_containers(
    user_env: dict[str, str],
) -> dict[str, tuple[dict[str, list[str]], str, list[str]]]:
    runs = [podman_run(words) for words in dry_run(user_env) if words[:2] == ["podman", "run"]]
    return {
        options["--name"][0].rsplit("-", 1)[1]: (options, image, cmd)
        for options, image, cmd in runs
    }


def test_the_script_runs_what_compose_runs() -> None:
    services = compose({})["services"]
    containers = script_containers({})
    assert set(containers) == set(services)
    for name, (options, image, command) in containers.items():
        service = services[name]
        assert image == service["image"]
        assert command == service.get("command", [])
        assert options["--restart"] == [service["restart"]]
        health = service["healthcheck"]
        assert health["test"][0] == "CMD-SHELL"  # podman takes a plain --health-cmd as shell
        assert options["--health-cmd"] == [health["test"][1]]
        for key in ("interval", "timeout", "start_period", "retries"):
            flag = f"--health-{key.replace('_', '-')}"
            assert options.get(flag) == ([str(health[key])] if key in health else None), flag
    proxy = containers["proxy"][0]
    assert "--read-only" in proxy
    assert proxy["--tmpfs"] == services["proxy"]["tmpfs"]
    assert proxy["--cap-drop"] == services["proxy"]["cap_drop"]
    assert proxy["--security-opt"] == services["proxy"]["security_opt"]


@pytest.mark.parametrize("user_env", USER_ENVS.values(), ids=USER_ENVS.keys())
def test_the_script_gives_the_proxy_the_compose_environment(user_env: dict[str, str]) -> None:
    options = script_containers(user_env)["proxy"][0]
    pairs = [item.partition("=") for item in options["--env"]]
    # podman passes a bare --env NAME on from its own environment, as compose does
    env = {
        name: value if sep else user_env[name]
        for name, sep, value in pairs
        if sep or name in user_env
    }
    assert env == proxy_environment(user_env)


def test_the_script_publishes_and_builds_as_compose_does() -> None:
    commands = dry_run({})
    proxy = compose({})["services"]["proxy"]
    (pod,) = [words for words in commands if words[:3] == ["podman", "pod", "create"]]
    options = podman_run(["podman", "run", *pod[3:], "image"])[0]
    assert [published(port) for port in options["--publish"]] == [
        published(port) for port in proxy["ports"]
    ]
    # the pod shares one loopback: the compose service name must point there
    redis_host = urlsplit(proxy["environment"]["PROXY_REDIS_URL"]).hostname
    assert options["--add-host"] == [f"{redis_host}:127.0.0.1"]
    (build,) = [words for words in commands if words[:2] == ["podman", "build"]]
    context = (COMPOSE.parent / proxy["build"]["context"]).resolve()
    assert build[-1] == str(context)
    assert build[build.index("--file") + 1] == str(context / proxy["build"]["dockerfile"])
    assert build[build.index("--tag") + 1] == proxy["image"]


def test_the_script_takes_down_only_its_pod_and_refuses_unknown_arguments() -> None:
    assert dry_run({}, "down") == [
        ["podman", "pod", "rm", "--force", "--ignore", "lunary-cache-proxy"]
    ]
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--detach"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "unknown argument: --detach" in result.stderr
