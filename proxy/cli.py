"""The command line: flags over the PROXY_* environment, help made from the Settings model (so
it lists every setting as it is), and the commands that answer instead of serving."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import MutableMapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from pydantic import SecretStr

from config import ConfigError, Settings, load_settings
from config.masking import MASK, masked_url
from config.settings import ENV_PREFIX
from proxy.preflight import run_checks

PROG = "lunary-cache-proxy"

# flag destination -> the setting it overrides
OVERRIDES: dict[str, str] = {
    "host": "host",
    "port": "port",
    "upstream": "upstream_url",
    "redis_url": "redis_url",
    "workers": "workers",
}
METAVARS = {"host": "HOST", "port": "PORT", "upstream": "URL", "redis_url": "URL", "workers": "N"}

Command = Literal["serve", "check", "connect", "print"]


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def installed_version() -> str:
    try:
        return version(PROG)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def shown(value: object) -> str:
    """A setting's value as the environment would spell it, secrets masked: a set SecretStr
    is ***, an unset one empty, as is None; a URL keeps all but its passwords."""
    match value:
        case SecretStr():
            return MASK if value.get_secret_value() else ""
        case None:
            return ""
        case bool():
            return "true" if value else "false"
        case float() if value.is_integer():
            return str(int(value))
        case str():
            return masked_url(value)
        case _:
            return str(value)


def settings_help(model: type[Settings] = Settings) -> str:
    """Two lines per setting, in the model's order: `NAME=default`, then what it means."""
    lines = ["settings (environment variables; a .env file in the working directory too):"]
    for name, field in model.model_fields.items():
        lines.append(f"  {env_name(name)}={shown(field.default)}")
        lines.append(f"      {field.description or ''}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A caching read-through proxy for the Lunary runs API. With no command "
        "it serves on PROXY_HOST:PROXY_PORT.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {installed_version()}")
    commands = parser.add_argument_group("commands (each answers and exits; none serves)")
    exclusive = commands.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--check-config",
        action="store_true",
        help="validate the settings: exit 0, or 2 with one line naming the variable",
    )
    exclusive.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings, one NAME=value a line, secrets as ***",
    )
    commands.add_argument(
        "--connect",
        action="store_true",
        help="with --check-config: also reach the upstream and Redis; exit 1 if one fails",
    )
    overrides = parser.add_argument_group("overrides (each sets its PROXY_* variable)")
    for dest, field in OVERRIDES.items():
        description = Settings.model_fields[field].description
        overrides.add_argument(
            f"--{dest.replace('_', '-')}",
            metavar=METAVARS[dest],
            help=f"{env_name(field)}: {description}",
        )
    return parser


def parse(argv: Sequence[str] | None = None) -> tuple[Command, argparse.Namespace]:
    """The command the arguments ask for; a usage error exits 2 (argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.connect and not args.check_config:
        parser.error("--connect goes with --check-config")
    command: Command = "serve"
    if args.check_config:
        command = "connect" if args.connect else "check"
    elif args.print_config:
        command = "print"
    return command, args


def apply_overrides(
    args: argparse.Namespace, environ: MutableMapping[str, str] = os.environ
) -> None:
    """Export each given flag as its PROXY_* variable: the settings read it from there, and
    so do uvicorn's worker processes, which build their apps from the environment."""
    for dest, field in OVERRIDES.items():
        value = getattr(args, dest)
        if value is not None:
            environ[env_name(field)] = value


def load_or_exit() -> Settings:
    """The settings, or exit 2 with the one line that names the variable at fault."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def print_config(settings: Settings) -> list[str]:
    return [f"{env_name(name)}={shown(getattr(settings, name))}" for name in Settings.model_fields]


def summary(settings: Settings) -> list[str]:
    """`configuration ok` and what the proxy would do with it, for a person."""
    store = (
        f"redis{' cluster' if settings.redis_cluster else ''} at {masked_url(settings.redis_url)}"
        if settings.redis_url
        else f"in-memory, up to {settings.memory_max_entries} entries (not shared)"
    )
    scope = (
        "set"
        if settings.scope_secret.get_secret_value()
        else "not set: a random one each start (entries survive no restart and are not shared)"
    )
    return [
        "configuration ok",
        f"  upstream      {settings.upstream_url}",
        f"  store         {store}",
        f"  listen        {settings.host}:{settings.port}, {settings.workers} worker(s)",
        f"  scope secret  {scope}",
        f"  admin         {'on' if settings.admin_token.get_secret_value() else 'off'}",
    ]


def run_command(command: Command, settings: Settings) -> int:
    """Answer a command that is not `serve`; the exit status."""
    if command == "print":
        print("\n".join(print_config(settings)))
        return 0
    print("\n".join(summary(settings)))
    if command == "check":
        return 0
    checks = asyncio.run(run_checks(settings))
    print("\n".join(check.line() for check in checks))
    return 1 if any(check.outcome == "FAIL" for check in checks) else 0
