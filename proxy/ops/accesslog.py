"""One access line per request, with a request id that is accepted, or made, and returned."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from dataclasses import dataclass, field

from proxy.core.headers import Header
from proxy.ops import logs

log = logging.getLogger("proxy.access")
# ids we pass on as they came: short, printable, nothing a log or header parser could trip on
_ACCEPTABLE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
# ids we make: a random per-process prefix and a counter, 32 hex digits, unique across replicas
# without a call into the OS's random source on every request
_ID_PREFIX = os.urandom(8).hex().encode()
_id_counter = itertools.count(1)


@dataclass(slots=True)
class Access:
    """What one request's access line says; filled in as the request is served."""

    request_id: str
    method: str
    path: str
    route: str = "passthrough"
    cache: str = ""
    status: int = 0
    upstream_status: int | None = None
    cause: str | None = None  # why the upstream could not answer (proxy/core/causes.py), if so
    started: float = field(default_factory=time.perf_counter)

    def emit(self) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        logs.info_line(
            log,
            "request",
            {
                "request_id": self.request_id,
                "method": self.method,
                "path": self.path,
                "route": self.route,
                "cache": self.cache,
                "status": self.status,
                "upstream_status": self.upstream_status,
                "cause": self.cause,
                "duration_ms": round((time.perf_counter() - self.started) * 1000, 2),
            },
        )


def request_id(headers: list[Header]) -> tuple[bytes, list[Header]]:
    """The client's X-Request-ID if it is acceptable, else a new one; and the headers to use."""
    given = [value for name, value in headers if name == b"x-request-id"]
    if len(given) == 1 and _ACCEPTABLE_ID.fullmatch(given[0]):
        return given[0], headers
    made = b"%s%016x" % (_ID_PREFIX, next(_id_counter))
    kept = [(name, value) for name, value in headers if name != b"x-request-id"]
    kept.append((b"x-request-id", made))
    return made, kept
