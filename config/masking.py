"""How a setting is shown in a log line or on the command line: a URL keeps all but its
passwords, so that it still says where it goes."""

from __future__ import annotations

MASK = "***"


def masked_url(url: str) -> str:
    """`url` with the password of its user part and any `password` query value as ***, the
    rest left as written (a unix socket path, a CA file); a query is read with or without an
    authority (`unix:/run/redis.sock?password=...`)."""
    rest, question, query = url.partition("?")
    scheme, authority, head = rest.partition("://")
    if authority:
        at = head.rfind("@")  # the last one: a password may hold an unencoded @
        if at >= 0:
            user, _, password = head[:at].partition(":")
            if password:
                rest = f"{scheme}://{user}:{MASK}{head[at:]}"
    if question:
        query = "&".join(_masked_param(param) for param in query.split("&"))
    return f"{rest}{question}{query}"


def _masked_param(param: str) -> str:
    name, equals, value = param.partition("=")
    return f"{name}={MASK}" if equals and value and "password" in name.lower() else param
