"""PROXY_* settings, validated once at start-up so a bad value stops the process with one line."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.redis_url import parse_sentinel_url

ENV_PREFIX = "PROXY_"
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+sentinel"})

Seconds = Annotated[float, Field(ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class ConfigError(Exception):
    """A configuration value is invalid; the message names the variable and the problem."""


MIN_ADMIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Every tunable of the proxy. Names and defaults follow SPEC.md section 10."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    upstream_url: str = "https://api.lunary.ai"
    host: str = "0.0.0.0"  # noqa: S104 - a sidecar listens on the pod's interfaces
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    redis_url: str = ""
    redis_cluster: bool = False
    redis_timeout: PositiveSeconds = 0.25
    cache_ttl: Seconds = 60
    stale_ttl: Seconds = 600
    active_run_ttl: Seconds = 2
    negative_ttl: Seconds = 5
    max_entry_bytes: Annotated[int, Field(ge=0)] = 1_048_576
    max_request_bytes: Annotated[int, Field(ge=0)] = 20_971_520
    # passthrough bodies are read whole before going upstream (proxy/web/buffering.py): in memory
    # up to this many bytes each, then spooled to a temporary file
    request_buffer_bytes: Annotated[int, Field(ge=0)] = 1_048_576
    # the bytes spooled at once by all requests together: past it a body gets 503
    request_spool_bytes: Annotated[int, Field(ge=0)] = 536_870_912
    memory_max_entries: Annotated[int, Field(ge=1)] = 10_000
    scope_secret: SecretStr = SecretStr("")
    admin_token: SecretStr = SecretStr("")
    passthrough: bool = True
    upstream_timeout: PositiveSeconds = 10
    coalesce_timeout: PositiveSeconds | None = None
    # the passthrough pool; cache fills have their own, so neither can starve the other
    upstream_max_connections: Annotated[int, Field(ge=1)] = 100
    fill_max_connections: Annotated[int, Field(ge=1)] = 100
    # nginx's client_header_timeout, client_body_timeout and send_timeout (proxy/web/server.py)
    client_timeout: PositiveSeconds = 60
    workers: Annotated[int, Field(ge=1)] = 1
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["json", "console"] = "json"
    # the in-process tier in front of Redis (proxy/store/near.py); without Redis there is none:
    # the embedded store is in-process already
    near_cache: bool = True
    near_max_bytes: Annotated[int, Field(ge=0)] = 33_554_432
    near_ttl: PositiveSeconds = 3

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("coalesce_timeout", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("upstream_url")
    @classmethod
    def _check_upstream_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        if parts.username is not None or parts.password is not None:
            # the upstream client would send it as Basic auth on requests scoped anonymous
            raise ValueError("must not carry a user or password: Lunary takes keys per request")
        return value.rstrip("/")

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token and len(token) < MIN_ADMIN_TOKEN_LENGTH:
            # a short token is guessable, and requests carrying it anywhere are refused
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN_LENGTH} characters when set")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value:
            return value
        scheme = urlsplit(value).scheme
        if scheme not in REDIS_SCHEMES:
            allowed = ", ".join(f"{s}://" for s in sorted(REDIS_SCHEMES))
            raise ValueError(f"unknown scheme {scheme!r}; expected one of {allowed}")
        if scheme == "redis+sentinel":
            parse_sentinel_url(value)  # the one parser the store connects with: same errors
        return value

    @property
    def effective_coalesce_timeout(self) -> float:
        """Seconds a waiter waits for another request's fetch (default: the upstream timeout)."""
        return self.coalesce_timeout if self.coalesce_timeout is not None else self.upstream_timeout


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, turning validation errors into one ConfigError line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    message = first["msg"].removeprefix("Value error, ")
    return f"{ENV_PREFIX}{field.upper()}: {message}"
