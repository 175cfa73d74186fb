"""PROXY_* settings, validated once at start-up so a bad value stops the process with one line."""

from __future__ import annotations

import ssl
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

    upstream_url: str = Field(
        default="https://api.lunary.ai",
        description="Lunary API base URL (http or https; a path is kept)",
    )
    host: str = Field(
        default="0.0.0.0",  # noqa: S104 - a sidecar listens on the pod's interfaces
        description="listen address",
    )
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8080, description="listen port")
    redis_url: str = Field(
        default="",
        description="shared store: redis://, rediss://, unix:// or redis+sentinel:// URL; "
        "empty: in-memory store",
    )
    redis_cluster: bool = Field(default=False, description="talk to a Redis Cluster")
    redis_timeout: PositiveSeconds = Field(default=0.25, description="seconds per store call")
    cache_ttl: Seconds = Field(default=60, description="seconds a settled run stays fresh")
    stale_ttl: Seconds = Field(default=600, description="seconds servable as stale after that")
    active_run_ttl: Seconds = Field(
        default=2, description="seconds fresh for runs still in progress"
    )
    negative_ttl: Seconds = Field(default=5, description="seconds a 404 is kept")
    max_entry_bytes: Annotated[int, Field(ge=0)] = Field(
        default=1_048_576, description="larger bodies are passed on but not stored"
    )
    max_request_bytes: Annotated[int, Field(ge=0)] = Field(
        default=20_971_520, description="larger request bodies get 413"
    )
    # passthrough bodies are read whole before going upstream (proxy/web/buffering.py): in memory
    # up to this many bytes each, then spooled to a temporary file
    request_buffer_bytes: Annotated[int, Field(ge=0)] = Field(
        default=1_048_576, description="request bodies past this are spooled to a temporary file"
    )
    # the bytes spooled at once by all requests together: past it a body gets 503
    request_spool_bytes: Annotated[int, Field(ge=0)] = Field(
        default=536_870_912, description="bytes spooled by all requests at once; past it, 503"
    )
    memory_max_entries: Annotated[int, Field(ge=1)] = Field(
        default=10_000, description="bound of the in-memory store (LRU)"
    )
    scope_secret: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC key for scopes; empty: a random one, with a warning",
    )
    admin_token: SecretStr = Field(
        default=SecretStr(""),
        description="bearer token for /admin (16+ characters); empty: admin off",
    )
    passthrough: bool = Field(default=True, description="forward non-cached paths and methods")
    upstream_timeout: PositiveSeconds = Field(
        default=10, description="seconds per upstream request"
    )
    coalesce_timeout: PositiveSeconds | None = Field(
        default=None,
        description="seconds a waiter waits for another's fetch; empty: the upstream timeout",
    )
    # the passthrough pool; cache fills have their own, so neither can starve the other
    upstream_max_connections: Annotated[int, Field(ge=1)] = Field(
        default=100, description="bound of the passthrough's upstream connection pool"
    )
    fill_max_connections: Annotated[int, Field(ge=1)] = Field(
        default=100, description="bound of the cache fills' own upstream connection pool"
    )
    # nginx's client_header_timeout, client_body_timeout and send_timeout (proxy/web/server.py)
    client_timeout: PositiveSeconds = Field(
        default=60, description="seconds a slow client is given per step of its request or answer"
    )
    workers: Annotated[int, Field(ge=1)] = Field(default=1, description="uvicorn worker processes")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="least severe level logged"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="json, console, or auto: console on a terminal, else json"
    )
    # the in-process tier in front of Redis (proxy/store/near.py); without Redis there is none:
    # the embedded store is in-process already
    near_cache: bool = Field(default=True, description="the in-process tier in front of Redis")
    near_max_bytes: Annotated[int, Field(ge=0)] = Field(
        default=33_554_432, description="the in-process tier's bound; 0 turns it off"
    )
    near_ttl: PositiveSeconds = Field(
        default=3, description="seconds an in-process entry is answered before Redis confirms it"
    )
    upstream_ca_file: str = Field(
        default="",
        description="PEM bundle of extra CAs trusted for the upstream, added to the system trust",
    )

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

    @field_validator("upstream_ca_file")
    @classmethod
    def _check_upstream_ca_file(cls, value: str) -> str:
        """Read as the upstream client will read it: a bad file stops start-up, rather than
        turn every upstream request into a 502."""
        if not value:
            return value
        trusted = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            trusted.load_verify_locations(cafile=value)
        except ssl.SSLError:
            raise ValueError(f"{value} is not a PEM file of certificates") from None
        except OSError as exc:
            raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
        if not trusted.cert_store_stats()["x509"]:
            raise ValueError(f"{value} holds no certificate")
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
