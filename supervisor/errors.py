"""The supervisor's two error vocabularies, in a leaf that imports nothing of the project, so
that the config loader, the tenant rows and the tenant sources can all raise them without
importing each other."""
from __future__ import annotations


class ConfigError(Exception):
    """The whole config is unusable; the message is one clear line, never a secret."""


class SourceError(Exception):
    """The tenant source could not be read (unreachable, error answer). One clear line, no secret.

    The supervisor keeps running the tenants it has and tries again next round.
    """
