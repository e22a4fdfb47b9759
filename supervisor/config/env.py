"""Configuration from the environment: IDLE_SUPERVISOR_<SECTION>_<KEY> overrides, and where the
config file is (or that there is none: Railway and containers configure everything this way).

Kept apart from load.py, which turns tables into settings: this module only decides which
tables the environment adds, and how a variable's text becomes a value.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from supervisor.errors import ConfigError
from tenant_proc.spec import SKIP_CLASSES, boolean

CONFIG_ENV = "IDLE_SUPERVISOR_CONFIG"
ENV_PREFIX = "IDLE_SUPERVISOR_"
ENV_SECTIONS = ("supervisor", "imap", "handler", "tenants", "state", "metrics", "cluster")
# IDLE_SUPERVISOR_* variables that are CLI defaults, not config keys.
_ENV_NOT_CONFIG = {"IDLE_SUPERVISOR_CONFIG", "IDLE_SUPERVISOR_LOG_LEVEL", "IDLE_SUPERVISOR_LOG_FORMAT"}


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file, or None when the environment alone configures us (Railway)."""
    environ = os.environ if environ is None else environ
    path = cli_path or environ.get(CONFIG_ENV)
    if path:
        return Path(path)
    if environ.get("SUPABASE_URL") or env_overrides(environ):
        return None
    raise ConfigError(f"no config: pass --config PATH, set {CONFIG_ENV}, or configure through "
                      f"{ENV_PREFIX}<SECTION>_<KEY> and SUPABASE_URL environment variables")


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """IDLE_SUPERVISOR_IMAP_POLL_INTERVAL=30 -> {"imap": {"poll_interval": 30}}.

    Values are read as TOML values when they parse as one (numbers, booleans, arrays),
    else taken as plain strings, so `..._HANDLER_PATH=/data/emails.jsonl` needs no quotes.
    """
    tables: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_CONFIG:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in ENV_SECTIONS or not key:
            raise ConfigError(f"environment variable {name}: expected {ENV_PREFIX}<SECTION>_<KEY> "
                              f"with SECTION one of {', '.join(s.upper() for s in ENV_SECTIONS)}")
        tables.setdefault(section, {})[key] = _env_value(raw)
    return tables


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw




def strict_bool(value: Any, where: str) -> bool:
    """true/false, or their text in any case (tenant_proc.spec.boolean); anything else is
    refused with one line naming where."""
    parsed = boolean(value)
    if parsed is not None:
        return parsed
    raise ConfigError(f"{where} must be true or false, not {str(value)[:40]!r}")


def skip_classes(value: Any, where: str) -> tuple[str, ...]:
    """`skip`: a list of classes (SKIP_CLASSES), or their names separated by commas (an
    environment variable, a text column); an unknown name is refused, never ignored: a typo
    would otherwise hand every bounce to the answering service."""
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of {', '.join(SKIP_CLASSES)}")
    names = tuple(dict.fromkeys(v.strip().lower() for v in value))
    unknown = [n for n in names if n not in SKIP_CLASSES]
    if unknown:
        raise ConfigError(f"{where}: unknown class {unknown[0][:40]!r} "
                          f"(known: {', '.join(SKIP_CLASSES)})")
    return names
