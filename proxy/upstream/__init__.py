"""The Upstream port's adapter: Lunary over HTTP (httpx, on an aiohttp transport)."""

from proxy.upstream.client import LunaryUpstream

__all__ = ["LunaryUpstream"]
