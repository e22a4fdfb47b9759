"""The supervisor's configuration error, in a module of its own so that config.py, config_env.py
and tenant_rows.py can all raise it without importing each other in a circle."""
from __future__ import annotations


class ConfigError(Exception):
    """The whole config is unusable; the message is one clear line, never a secret."""
