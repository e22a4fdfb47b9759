"""Optional libraries, imported only when a configured feature needs them.

A missing one must end in one line that names the `pip install` to run, never in a traceback
from deep inside a tenant process: callers in the supervisor turn MissingDependency into a
configuration error (exit code 2).
"""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(ImportError):
    """A feature is configured but its library is not installed; the message says what to do."""


def require(module: str, feature: str, install: str) -> ModuleType:
    """Import module for feature, or raise MissingDependency naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{feature} needs the Python package {exc.name or module!r}, which is not installed: "
            f"run {install}"
        ) from None
