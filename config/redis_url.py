"""Redis URL forms the settings accept and the store connects to: here the Sentinel one."""

from __future__ import annotations

from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel://"


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """`redis+sentinel://[:password@]host:port[,host:port...]/service[/db]`:
    (sentinels, service name, db, password)."""
    rest = url.removeprefix(SENTINEL_SCHEME)
    netloc, _, path = rest.partition("/")
    password = None
    if "@" in netloc:
        user_info, netloc = netloc.rsplit("@", 1)
        password = unquote(user_info.partition(":")[2]) or None
    hosts = []
    for host_port in netloc.split(","):
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"sentinel address {host_port!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ValueError("the URL names no sentinel service (…/service_name)")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    return hosts, service, int(db or 0), password
