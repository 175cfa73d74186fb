"""The Upstream port's adapter: Lunary over HTTP."""
