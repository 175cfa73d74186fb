"""lunary-cache-proxy: a caching read-through proxy for the Lunary runs API."""

__version__ = "0.1.0"
