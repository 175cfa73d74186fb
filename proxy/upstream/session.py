"""The aiohttp session under every upstream request: guarded connections, verified TLS, nothing
added to what the proxy sends (no headers, cookies or credentials of aiohttp's own), and the
proxy that the environment names for the upstream."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from proxy.upstream.guard import GuardedConnector

# What aiohttp would add on its own: the request goes out with the client's headers only.
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# as much header as h11 (httpx's own transport) accepted: a long upstream header is not a 502
MAX_UPSTREAM_FIELD_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class EnvProxy:
    """The forward proxy HTTP(S)_PROXY and NO_PROXY name for the upstream, or none.

    A login (from the variable's URL, or ~/.netrc for the proxy's host) stays in `url`: aiohttp
    sends it to the proxy alone as Proxy-Authorization (on CONNECT, or on each plain-http
    request through it): aiohttp deprecates its `proxy_auth`, and `proxy_headers` never
    reaches a plain-http request.
    """

    url: URL | None = None

    @classmethod
    def for_upstream(cls, base_url: str) -> EnvProxy:
        """Read once: aiohttp's trust_env would read it, and ~/.netrc, on every request, each
        through a worker thread, and send the netrc login for the upstream host as Basic auth
        on requests that carry no credential (cached under the anonymous scope)."""
        try:
            url, auth = get_env_proxy_for_url(URL(base_url))
        except LookupError:
            return cls()
        if auth is not None:
            url = url.with_user(auth.login).with_password(auth.password)
        return cls(url)


def open_session(
    max_connections: int, timeout: aiohttp.ClientTimeout, tls: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """A session of at most `max_connections` connections, verifying TLS with `tls` (None:
    aiohttp's own context, the system's trust); made inside the running loop (aiohttp binds a
    session to its loop)."""
    return aiohttp.ClientSession(
        connector=GuardedConnector(
            limit=max_connections,
            limit_per_host=0,
            ttl_dns_cache=60,
            ssl=True if tls is None else tls,  # never False: verification is not optional
        ),
        timeout=timeout,
        auto_decompress=False,  # bodies are relayed as the upstream encoded them
        skip_auto_headers=NO_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookie to another
        requote_redirect_url=False,
        trust_env=False,  # EnvProxy instead
        max_line_size=MAX_UPSTREAM_FIELD_BYTES,
        max_field_size=MAX_UPSTREAM_FIELD_BYTES,
    )
