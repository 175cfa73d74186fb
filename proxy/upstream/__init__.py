"""The Upstream port's adapter: Lunary over HTTP."""

from proxy.upstream.client import AiohttpUpstream as LunaryUpstream

__all__ = ["LunaryUpstream"]
