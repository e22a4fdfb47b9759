"""Config: TOML (+ environment for secrets) -> frozen dataclasses.

Two kinds of error, on purpose:
- ConfigError: the file as a whole is unusable (bad TOML, bad [supervisor] value, unknown
  handler). At start the supervisor refuses to run; on reload it keeps the old config.
- a per-tenant error (missing field, unreadable password env): that one tenant is reported as
  failed with the reason, every other tenant runs. A bad tenant never takes the others down.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from supervisor.config.env import env_overrides, skip_classes, strict_bool
from supervisor.config.settings import (
    ClusterSettings,
    Config,
    MetricsSettings,
    SupervisorSettings,
    TenantSourceSettings,
)
from supervisor.config.timeouts import derive_timeouts, store_request_timeout
from supervisor.errors import ConfigError
from tenant_proc.spec import (
    BACKFILL_MODES,
    UIDVALIDITY_MODES,
    HandlerSpec,
    ImapSettings,
    Secret,
    StateSpec,
)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except PermissionError:
        raise ConfigError(f"config file not readable: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _dataclass_from_table(cls: type, table: Any, section: str) -> Any:
    """Build a settings dataclass, checking names and types so a typo is a clear error."""
    if table is None:
        return cls()
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"[{section}] unknown key {key!r} (known: {', '.join(sorted(known))})")
        default = getattr(cls(), key)
        values[key] = _coerce(value, default, f"[{section}] {key}")
    return cls(**values)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        return strict_bool(value, where)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number")
        if value < 0:
            raise ConfigError(f"{where} must not be negative")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number")
        if value < 0:
            raise ConfigError(f"{where} must not be negative")
        return value
    if isinstance(default, str) or default is None:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value
    if isinstance(default, tuple):  # [imap] skip: a list of class names
        return skip_classes(value, where)
    return value


def _validate_supervisor(s: SupervisorSettings) -> None:
    if s.heartbeat_interval <= 0:
        raise ConfigError("[supervisor] heartbeat_interval must be above 0")
    if s.heartbeat_timeout <= s.heartbeat_interval:
        raise ConfigError(f"[supervisor] heartbeat_timeout ({s.heartbeat_timeout:g}s) must be above "
                          f"heartbeat_interval ({s.heartbeat_interval:g}s)")
    if s.idle_heartbeat_interval < s.heartbeat_interval:
        raise ConfigError("[supervisor] idle_heartbeat_interval must be at least heartbeat_interval")
    if s.restart_jitter > 1:
        raise ConfigError("[supervisor] restart_jitter is a fraction between 0 and 1")
    if s.tenant_refresh <= 0:
        raise ConfigError("[supervisor] tenant_refresh must be above 0")


def _validate_imap(s: ImapSettings) -> None:
    if s.backfill not in BACKFILL_MODES:
        raise ConfigError(f"[imap] backfill must be one of {', '.join(BACKFILL_MODES)}")
    if s.idle_timeout <= 0 or s.poll_interval <= 0:
        raise ConfigError("[imap] idle_timeout and poll_interval must be above 0")
    if s.batch_size < 1 or s.max_attempts < 1:
        raise ConfigError("[imap] batch_size and max_attempts must be at least 1")
    if s.on_uidvalidity_change not in UIDVALIDITY_MODES:
        raise ConfigError(f"[imap] on_uidvalidity_change must be one of {', '.join(UIDVALIDITY_MODES)}")
    if s.max_batch_bytes < 1:
        raise ConfigError("[imap] max_batch_bytes must be at least 1")
    if s.missing_uid_timeout <= 0:
        raise ConfigError("[imap] missing_uid_timeout must be above 0")


SUPABASE_HANDLER = "tenant_proc.handlers:supabase_insert"
DEFAULT_JSONL_NAME = "emails.jsonl"


def _handler_spec(table: Any, state_dir: Path, source: str) -> HandlerSpec:
    """[handler], with defaults that work when nothing is configured (Railway, a container):
    - no [handler] keys at all and companies from Supabase: supabase_insert into `emails`
      (sql/001_init.sql makes it), so mail lands in the database the companies come from;
    - otherwise the target defaults to jsonl, and jsonl without `path` writes
      <state_dir>/emails.jsonl.
    """
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise ConfigError("[handler] must be a table")
    if not table and source == "supabase":
        return HandlerSpec(target=SUPABASE_HANDLER)
    target = table.get("target", HandlerSpec.target)
    if target == HandlerSpec.target and "path" not in table:
        table = {**table, "path": str(state_dir / DEFAULT_JSONL_NAME)}
    if not isinstance(target, str) or ":" not in target:
        raise ConfigError("[handler] target must look like 'module:callable'")
    options = {k: v for k, v in table.items() if k != "target"}
    try:
        hash(tuple(_freeze(options).items()))
    except TypeError:
        raise ConfigError("[handler] options must be plain TOML values") from None
    frozen = _freeze(options)
    if isinstance(frozen.get("secret"), str):  # a literal secret (webhook): never printed
        frozen["secret"] = Secret(frozen["secret"])
    return HandlerSpec(target=target, options=tuple(sorted(frozen.items())))


def _freeze(value: Any) -> Any:
    """Make TOML values hashable (lists -> tuples, tables -> sorted item tuples)."""
    if isinstance(value, dict):
        return {k: _freeze_value(v) for k, v in value.items()}
    return value


def _freeze_value(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze_value(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze_value(v)) for k, v in value.items()))
    return value


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), then apply IDLE_SUPERVISOR_* environment overrides.

    With no file, relative paths resolve against the working directory, and the tenant
    source defaults to Supabase when SUPABASE_URL is set.
    """
    environ = os.environ if environ is None else environ
    data = _read_toml(path) if path is not None else {}
    base_dir = path.resolve().parent if path is not None else Path.cwd()
    for section, values in env_overrides(environ).items():
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        table.update(values)
    if path is None and environ.get("SUPABASE_URL"):
        data.setdefault("tenants", {}).setdefault("source", "supabase")
    known_sections = {"supervisor", "imap", "handler", "tenants", "tenant", "state", "metrics",
                      "cluster"}
    unknown = set(data) - known_sections
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")

    supervisor = _dataclass_from_table(SupervisorSettings, data.get("supervisor"), "supervisor")
    state_dir = Path(supervisor.state_dir)
    if not state_dir.is_absolute():
        state_dir = base_dir / state_dir
    supervisor = _replace(supervisor, state_dir=str(state_dir))
    imap = _dataclass_from_table(ImapSettings, data.get("imap"), "imap")
    supervisor, imap = derive_timeouts(supervisor, imap, data.get("supervisor") or {},
                                       data.get("imap") or {})
    _validate_supervisor(supervisor)
    _validate_imap(imap)
    tenants = _dataclass_from_table(TenantSourceSettings, data.get("tenants"), "tenants")
    if tenants.source not in ("file", "supabase"):
        raise ConfigError("[tenants] source must be 'file' or 'supabase'")
    handler = _handler_spec(data.get("handler"), state_dir, tenants.source)
    state = _state_spec(data.get("state"), str(state_dir), tenants.source, environ)
    state = _replace(state, request_timeout=store_request_timeout(supervisor))
    metrics = _dataclass_from_table(MetricsSettings, data.get("metrics"), "metrics")
    cluster = _cluster_settings(data.get("cluster"), tenants, state)

    raw_tenants: list[Mapping[str, Any]] = []
    if tenants.source == "file":
        raw_tenants = _raw_file_tenants(data, tenants, base_dir)

    return Config(
        path=str(path.resolve()) if path is not None else "(environment)",
        base_dir=str(base_dir),
        supervisor=supervisor,
        imap=imap,
        handler=handler,
        state=state,
        tenants=tenants,
        metrics=metrics,
        cluster=cluster,
        raw_tenants=tuple(raw_tenants),
    )


def _cluster_settings(table: Any, tenants: TenantSourceSettings, state: StateSpec) -> ClusterSettings:
    cluster = _dataclass_from_table(ClusterSettings, table, "cluster")
    if not cluster.enabled:
        return cluster
    if cluster.lease_ttl < 1:
        raise ConfigError("[cluster] lease_ttl must be at least 1 second")
    if tenants.source != "supabase" or state.backend != "supabase":
        raise ConfigError("[cluster] enabled = true needs [tenants] source = \"supabase\" and "
                          "[state] backend = \"supabase\": the leases, checkpoints and ledger "
                          "must live in the one database every instance shares")
    if not cluster.instance_id:
        import socket

        cluster = _replace(cluster, instance_id=f"{socket.gethostname()}-{os.getpid()}")
    return cluster


def _replace(obj: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(obj, **changes)


def _state_spec(table: Any, state_dir: str, source: str, environ: Mapping[str, str]) -> StateSpec:
    if table is not None and not isinstance(table, dict):
        raise ConfigError("[state] must be a table")
    table = table or {}
    unknown = set(table) - {"backend"}
    if unknown:
        raise ConfigError(f"[state] unknown key(s): {', '.join(sorted(unknown))}")
    backend = table.get("backend", "supabase" if source == "supabase" else "sqlite")
    if backend not in ("sqlite", "supabase"):
        raise ConfigError("[state] backend must be 'sqlite' or 'supabase'")
    if backend == "supabase":
        url, key = supabase_credentials(environ)
        return StateSpec(backend="supabase", state_dir=state_dir, supabase_url=url, supabase_key=key)
    return StateSpec(backend="sqlite", state_dir=state_dir)


def supabase_credentials(environ: Mapping[str, str]) -> tuple[str, Secret]:
    url = environ.get("SUPABASE_URL", "").strip()
    key = environ.get("SUPABASE_SERVICE_ROLE_KEY", "").strip()
    if not url or not key:
        raise ConfigError("Supabase needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY in the environment")
    return url, Secret(key)


def _raw_file_tenants(data: dict[str, Any], tenants: TenantSourceSettings, base_dir: Path) -> list[Mapping[str, Any]]:
    rows = data.get("tenant", [])
    if tenants.file:
        extra_path = Path(tenants.file)
        if not extra_path.is_absolute():
            extra_path = base_dir / extra_path
        rows = list(rows) + list(_read_toml(extra_path).get("tenant", []))
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ConfigError("[[tenant]] entries must be tables")
    return rows
