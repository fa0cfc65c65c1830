"""Typed settings for keygate and their loading (docs/reference.md#configuration)."""

from keygate.config.loader import ConfigError, load_settings, with_upstream
from keygate.config.settings import AuthSettings, Route, ServerSettings, Settings, StoreSettings

__all__ = [
    "AuthSettings",
    "ConfigError",
    "Route",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "load_settings",
    "with_upstream",
]
