"""The TLS context of the upstream connections: the system's trust, plus the CAs that
PROXY_UPSTREAM_CA_FILE names (an internal Lunary, a TLS-inspecting egress proxy)."""

from __future__ import annotations

import ssl


def upstream_tls(ca_file: str = "") -> ssl.SSLContext:
    """Certificate and host name verified, against the system's CAs and `ca_file`'s besides.

    Built once per process and shared by both upstream pools: aiohttp pools connections by
    context, and loading the system's CAs reads disk (call it off the event loop).
    SSL_CERT_FILE and SSL_CERT_DIR, read here by OpenSSL, replace the system's CAs instead.
    """
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])  # as aiohttp's own context: the proxy speaks 1.1
    return context
