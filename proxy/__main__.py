"""`lunary-cache-proxy` / `python -m proxy`: read the command line (proxy/cli.py) and the
settings, then answer a command or serve with uvicorn."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from typing import Any

import uvicorn

from config import Settings
from proxy import cli
from proxy.ops import logs
from proxy.web.server import guarded_protocol

# How uvicorn serves the proxy (benchmarks/floor.py serves the Python floor the same way).
SERVER_OPTIONS: dict[str, Any] = {
    # the client address must be the socket peer, never rewritten from its own headers
    "proxy_headers": False,
    "server_header": False,
    "access_log": False,  # the proxy writes its own access line
    # Lunary has no WebSocket route: an Upgrade is a plain request (its hop-by-hop headers
    # dropped), never a handshake the app would have to refuse
    "ws": "none",
    "log_config": None,
}


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the proxy: SERVER_OPTIONS and its own HTTP protocol (the tests
    serve the app with these too)."""
    return {**SERVER_OPTIONS, "http": guarded_protocol(settings.client_timeout)}


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: flags go into the environment before the settings are read from
    it; a command answers and exits, else the proxy serves."""
    command, args = cli.parse(argv)
    cli.apply_overrides(args)
    settings = cli.load_or_exit()
    if command != "serve":
        raise SystemExit(cli.run_command(command, settings))
    serve(settings)


def serve(settings: Settings) -> None:
    """Run uvicorn until it is stopped: this process's app, or `workers` that build their own."""
    logs.configure(settings.log_level, settings.log_format)
    if settings.workers > 1 and not settings.scope_secret.get_secret_value():
        # workers build their own app: give them one generated secret so they share scopes
        os.environ["PROXY_SCOPE_SECRET"] = secrets.token_urlsafe(32)
        logging.getLogger("proxy").warning(
            "PROXY_SCOPE_SECRET is not set: the workers share a random one, so cached entries "
            "survive neither a restart nor sharing between replicas"
        )
    from proxy.web.app import create_app

    # workers each build their app from the environment (uvicorn's factory); one worker is this
    # process, its app built here
    target = "proxy.web.app:app_from_environment" if settings.workers > 1 else create_app(settings)
    uvicorn.run(
        target,
        factory=settings.workers > 1,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        lifespan="on",
        timeout_graceful_shutdown=max(5, int(settings.upstream_timeout) + 1),
        **server_options(settings),
    )


if __name__ == "__main__":
    main()
