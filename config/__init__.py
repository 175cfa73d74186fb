"""Settings for lunary-cache-proxy, read from PROXY_* environment variables."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
