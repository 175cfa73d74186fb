"""The command line: flags parse to commands, --help lists every setting from the model, flags
override the environment, and no secret is ever shown."""

from __future__ import annotations

import os
from importlib.metadata import version

import pytest
from pydantic import SecretStr

from config import Settings, load_settings
from config.masking import masked_url
from proxy import cli
from proxy.preflight import Check, url_secrets


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in list(os.environ):
        if name.startswith("PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))  # no .env file


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], "serve"),
        (["--port", "9000"], "serve"),
        (["--check-config"], "check"),
        (["--check-config", "--connect"], "connect"),
        (["--connect", "--check-config"], "connect"),
        (["--print-config"], "print"),
        (["--print-config", "--redis-url", "redis://r:6379"], "print"),
    ],
)
def test_arguments_name_one_command(argv: list[str], command: str) -> None:
    assert cli.parse(argv)[0] == command


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["serve"], "unrecognized arguments: serve"),
        (["--connect"], "--connect goes with --check-config"),
        (["--check-config", "--print-config"], "not allowed with argument"),
        (["--port"], "expected one argument"),
    ],
)
def test_a_usage_error_exits_2_with_the_usage_on_stderr(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.parse(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lunary-cache-proxy")
    assert complaint in err


def test_every_setting_has_a_one_line_description() -> None:
    undocumented = [
        name
        for name, field in Settings.model_fields.items()
        if not field.description or "\n" in field.description
    ]
    assert undocumented == [], "give these settings a description=: " + ", ".join(undocumented)


def test_help_lists_every_setting_with_its_variable_default_and_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.parse(["--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()

    listed = [line.strip() for line in lines if line.startswith("  PROXY_")]
    assert [line.partition("=")[0] for line in listed] == [
        f"PROXY_{name.upper()}" for name in Settings.model_fields
    ]
    for name, field in Settings.model_fields.items():
        at = lines.index(f"  PROXY_{name.upper()}={cli.shown(field.default)}")
        assert lines[at + 1].strip() == field.description
    assert "  PROXY_CACHE_TTL=60" in lines
    assert "  PROXY_LOG_FORMAT=auto" in lines


def test_help_names_the_variable_each_override_flag_sets() -> None:
    text = cli.build_parser().format_help()
    for flag, variable in [
        ("--host HOST", "PROXY_HOST"),
        ("--port PORT", "PROXY_PORT"),
        ("--upstream URL", "PROXY_UPSTREAM_URL"),
        ("--redis-url URL", "PROXY_REDIS_URL"),
        ("--workers N", "PROXY_WORKERS"),
    ]:
        flag_line = next(line for line in text.splitlines() if line.strip().startswith(flag))
        assert f"{variable}:" in flag_line


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.parse(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"lunary-cache-proxy {version('lunary-cache-proxy')}\n"


def test_flags_are_exported_as_their_variables_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROXY_PORT", "7000")
    monkeypatch.setenv("PROXY_UPSTREAM_URL", "http://from-env:1")
    monkeypatch.setenv("PROXY_WORKERS", "3")
    _, args = cli.parse(
        ["--port", "9000", "--upstream", "http://from-flag:2", "--host", "127.0.0.1"]
    )

    cli.apply_overrides(args)
    settings = load_settings()

    assert os.environ["PROXY_PORT"] == "9000"  # where uvicorn's workers will read it
    assert (settings.port, settings.upstream_url, settings.host) == (
        9000,
        "http://from-flag:2",
        "127.0.0.1",
    )
    assert settings.workers == 3  # no flag: the environment's value stands
    assert "PROXY_REDIS_URL" not in os.environ


def test_an_empty_redis_url_flag_chooses_the_in_memory_store() -> None:
    environ = {"PROXY_REDIS_URL": "redis://r:6379/0"}
    cli.apply_overrides(cli.parse(["--redis-url", ""])[1], environ)
    assert environ == {"PROXY_REDIS_URL": ""}


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@r:6379/0", "redis://:***@r:6379/0"),
        ("rediss://app:s3cret@r:6380/1?ssl_ca_certs=/ca.crt", "rediss://app:***@r:6380/1?ssl_ca_certs=/ca.crt"),
        ("redis://app@r/0", "redis://app@r/0"),  # a user name alone is no secret
        ("redis://:p@ss/w@r:6379/0", "redis://:***@r:6379/0"),  # an unencoded @ and /
        ("redis://r/0?password=s3cret&db=2", "redis://r/0?password=***&db=2"),
        ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
        ("unix:/run/redis.sock?password=s3cret", "unix:/run/redis.sock?password=***"),  # no //
        ("redis+sentinel://:s3cret@a:26379,b:26379/main/0", "redis+sentinel://:***@a:26379,b:26379/main/0"),
        ("https://api.lunary.ai", "https://api.lunary.ai"),
    ],
)  # fmt: skip
def test_urls_keep_everything_but_their_passwords(url: str, masked: str) -> None:
    assert masked_url(url) == masked


def test_the_secrets_of_a_url_are_found_as_written_and_decoded() -> None:
    assert url_secrets("redis://:p%40ss@r/0?password=two") == ["p%40ss", "p@ss", "two"]
    assert url_secrets("redis://r/0") == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (SecretStr("s3cret"), "***"),
        (SecretStr(""), ""),
        (None, ""),
        (True, "true"),
        (False, "false"),
        (60.0, "60"),
        (0.25, "0.25"),
        (1_048_576, "1048576"),
        ("0.0.0.0", "0.0.0.0"),
    ],
)
def test_values_are_shown_as_the_environment_spells_them(value: object, text: str) -> None:
    assert cli.shown(value) == text


def test_print_config_shows_every_setting_once_and_no_secret() -> None:
    settings = load_settings(
        redis_url="redis://app:redis-pw@r:6379/0",
        scope_secret="scope-secret-value",
        admin_token="admin-token-value-0123",
        cache_ttl="30",
    )

    lines = cli.print_config(settings)
    text = "\n".join(lines)

    assert [line.partition("=")[0] for line in lines] == [
        f"PROXY_{name.upper()}" for name in Settings.model_fields
    ]
    for secret in ("redis-pw", "scope-secret-value", "admin-token-value-0123"):
        assert secret not in text
    assert "PROXY_REDIS_URL=redis://app:***@r:6379/0" in lines
    assert "PROXY_SCOPE_SECRET=***" in lines
    assert "PROXY_ADMIN_TOKEN=***" in lines
    assert "PROXY_CACHE_TTL=30" in lines
    assert "PROXY_COALESCE_TIMEOUT=" in lines  # unset: follows the upstream timeout


def test_printed_settings_read_back_as_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without secrets, --print-config's output is an environment that means the same."""
    settings = load_settings(cache_ttl="30", near_ttl="1.5", passthrough="false", port="9000")
    for line in cli.print_config(settings):
        name, _, value = line.partition("=")
        monkeypatch.setenv(name, value)
    assert load_settings() == settings


def test_the_summary_says_what_the_proxy_would_do_without_secrets() -> None:
    settings = load_settings(redis_url="redis://:redis-pw@r:6379/0", port="9000")
    text = "\n".join(cli.summary(settings))
    assert text.startswith("configuration ok\n")
    assert "redis at redis://:***@r:6379/0" in text
    assert "0.0.0.0:9000" in text
    assert "redis-pw" not in text
    assert "in-memory" in "\n".join(cli.summary(load_settings()))


def test_a_check_is_one_line_outcome_name_detail() -> None:
    assert Check("redis", "FAIL", "no answer").line().split() == ["FAIL", "redis", "no", "answer"]
    assert Check("upstream tls", "ok", "x").line().startswith("ok   upstream tls ")


def test_print_config_masks_a_password_in_a_url_without_an_authority() -> None:
    lines = cli.print_config(load_settings(redis_url="unix:/run/redis.sock?password=s3cret"))

    assert "PROXY_REDIS_URL=unix:/run/redis.sock?password=***" in lines
    assert not any("s3cret" in line for line in lines)
