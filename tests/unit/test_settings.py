"""Settings: SPEC defaults, and one clear line naming the variable for each bad value."""

from __future__ import annotations

import pytest

from config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))


def test_defaults_follow_the_spec() -> None:
    s = Settings()

    assert s.upstream_url == "https://api.lunary.ai"
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    assert s.redis_url == ""
    assert s.redis_cluster is False
    assert s.redis_timeout == 0.25
    assert (s.cache_ttl, s.stale_ttl, s.active_run_ttl, s.negative_ttl) == (60, 600, 2, 5)
    assert s.max_entry_bytes == 1_048_576
    assert s.max_request_bytes == 20_971_520
    assert s.memory_max_entries == 10_000
    assert s.passthrough is True
    assert s.upstream_timeout == 10
    assert s.effective_coalesce_timeout == 10
    assert s.upstream_max_connections == 100
    assert s.client_timeout == 60
    assert s.workers == 1
    assert (s.log_level, s.log_format) == ("info", "auto")  # console on a terminal, else json


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_UPSTREAM_URL", "http://lunary.internal:3333/")
    monkeypatch.setenv("PROXY_REDIS_URL", "rediss://:pw@redis:6380/1")
    monkeypatch.setenv("PROXY_COALESCE_TIMEOUT", "2.5")
    monkeypatch.setenv("PROXY_LOG_FORMAT", "CONSOLE")

    s = load_settings()

    assert s.upstream_url == "http://lunary.internal:3333"
    assert s.redis_url == "rediss://:pw@redis:6380/1"
    assert s.effective_coalesce_timeout == 2.5
    assert s.log_format == "console"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("PROXY_CACHE_TTL", "-1", "greater than or equal to 0"),
        ("PROXY_UPSTREAM_URL", "ftp://x", "http:// or https://"),
        ("PROXY_UPSTREAM_URL", "http://", "no host"),
        ("PROXY_REDIS_URL", "memcached://x", "unknown scheme"),
        ("PROXY_UPSTREAM_TIMEOUT", "0", "greater than 0"),
        ("PROXY_PASSTHROUGH", "maybe", "boolean"),
        ("PROXY_UPSTREAM_URL", "https://user:pw@api.lunary.ai", "must not carry a user"),
        ("PROXY_ADMIN_TOKEN", "short-token", "at least 16 characters"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ConfigError) as raised:
        load_settings()

    message = str(raised.value)
    assert message.startswith(f"{name}: ")
    assert fragment in message
    assert "\n" not in message


def test_secrets_are_not_shown_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_SCOPE_SECRET", "hunter2")
    monkeypatch.setenv("PROXY_ADMIN_TOKEN", "admin-token-hunter3")
    monkeypatch.setenv("PROXY_PORT", "nope")

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert "hunter2" not in str(raised.value)
    assert "hunter3" not in str(raised.value)
    assert "hunter2" not in repr(Settings(port=1))
    assert "hunter3" not in repr(Settings(port=1))


def test_sentinel_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.redis_url import parse_sentinel_url

    monkeypatch.setenv("PROXY_REDIS_URL", "redis+sentinel://:pw@10.0.0.1:26379,s2:26380/main/2")
    assert load_settings().redis_url.startswith("redis+sentinel://")
    assert parse_sentinel_url(load_settings().redis_url) == (
        [("10.0.0.1", 26379), ("s2", 26380)],
        "main",
        2,
        "pw",
    )
    monkeypatch.setenv("PROXY_REDIS_URL", "redis+sentinel://s1:26379")
    with pytest.raises(ConfigError, match=r"PROXY_REDIS_URL: .*service"):
        load_settings()
