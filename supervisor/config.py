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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from tenant_proc.spec import (
    BACKFILL_MODES,
    SECURITY_MODES,
    HandlerSpec,
    ImapSettings,
    Secret,
    StateSpec,
    TenantSpec,
)

CONFIG_ENV = "IDLE_SUPERVISOR_CONFIG"
TENANT_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class ConfigError(Exception):
    """The whole config is unusable; the message is one clear line, never a secret."""


@dataclass(frozen=True)
class SupervisorSettings:
    state_dir: str = "state"
    restart_backoff: float = 60.0  # crash -> restart delay (jittered)
    restart_jitter: float = 0.1  # +/- fraction of restart_backoff, so an outage is no login storm
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0  # no heartbeat this long: terminate, then kill
    # A tenant idling (or between polls) with nothing new beats this often instead; meanwhile
    # the supervisor checks in /proc that it is asleep, not stopped or spinning. 1,000 tenants
    # beating every 5 s were most of an idle supervisor's CPU (bench/idle_cost.py). Above
    # Dovecot's 2-minute keepalive, so idle beats ride on it (Control._beat_while_awake).
    idle_heartbeat_interval: float = 150.0
    tenant_refresh: float = 300.0
    shutdown_timeout: float = 10.0
    failed_backoff: float = 900.0  # auth/config failures, restart-intensity trips
    max_restarts: int = 5  # more crashes than this within restart_window -> failed
    restart_window: float = 600.0
    kill_timeout: float = 5.0  # after SIGTERM of a hung child, SIGKILL this much later


@dataclass(frozen=True)
class TenantSourceSettings:
    source: str = "file"  # file | supabase
    file: str | None = None  # optional separate TOML holding [[tenant]] tables


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""  # "127.0.0.1:9464" serves Prometheus metrics; empty: off


@dataclass(frozen=True)
class ClusterSettings:
    """[cluster]: several supervisors share the companies through leases (README: Running on several machines)."""

    enabled: bool = False
    instance_id: str = ""  # empty: host name + pid, unique per run
    lease_ttl: float = 30.0  # seconds; renewed every lease_ttl / 3
    max_tenants: int = 0  # most companies this instance runs; 0 = no limit


@dataclass(frozen=True)
class Config:
    path: str
    base_dir: str
    supervisor: SupervisorSettings
    imap: ImapSettings
    handler: HandlerSpec
    state: StateSpec
    tenants: TenantSourceSettings
    metrics: MetricsSettings = MetricsSettings()
    cluster: ClusterSettings = ClusterSettings()
    raw_tenants: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class TenantLoad:
    """Result of turning tenant rows into specs: good specs and per-tenant errors."""

    specs: dict[str, TenantSpec]
    errors: dict[str, tuple[str, str]]  # id -> (name, reason)


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
    if environ.get("SUPABASE_URL") or _env_overrides(environ):
        return None
    raise ConfigError(f"no config: pass --config PATH, set {CONFIG_ENV}, or configure through "
                      f"{ENV_PREFIX}<SECTION>_<KEY> and SUPABASE_URL environment variables")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
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
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
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
    return value


def _validate_supervisor(s: SupervisorSettings) -> None:
    if s.heartbeat_interval <= 0:
        raise ConfigError("[supervisor] heartbeat_interval must be above 0")
    if s.heartbeat_timeout <= s.heartbeat_interval:
        raise ConfigError("[supervisor] heartbeat_timeout must be above heartbeat_interval")
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


def _handler_spec(table: Any) -> HandlerSpec:
    if table is None:
        return HandlerSpec()
    if not isinstance(table, dict):
        raise ConfigError("[handler] must be a table")
    target = table.get("target", HandlerSpec.target)
    if not isinstance(target, str) or ":" not in target:
        raise ConfigError("[handler] target must look like 'module:callable'")
    options = {k: v for k, v in table.items() if k != "target"}
    try:
        hash(tuple(_freeze(options).items()))
    except TypeError:
        raise ConfigError("[handler] options must be plain TOML values") from None
    return HandlerSpec(target=target, options=tuple(sorted(_freeze(options).items())))


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
    for section, values in _env_overrides(environ).items():
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
    _validate_supervisor(supervisor)

    imap = _dataclass_from_table(ImapSettings, data.get("imap"), "imap")
    _validate_imap(imap)
    slowest = max(imap.connect_timeout, imap.command_timeout)
    if slowest >= supervisor.heartbeat_timeout:
        raise ConfigError(
            f"[supervisor] heartbeat_timeout ({supervisor.heartbeat_timeout:g}s) must be above "
            f"[imap] connect_timeout and command_timeout ({slowest:g}s), or a slow server would "
            "get a healthy tenant killed as hung")
    handler = _handler_spec(data.get("handler"))
    tenants = _dataclass_from_table(TenantSourceSettings, data.get("tenants"), "tenants")
    if tenants.source not in ("file", "supabase"):
        raise ConfigError("[tenants] source must be 'file' or 'supabase'")
    state = _state_spec(data.get("state"), str(state_dir), tenants.source, environ)
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


def build_tenant_specs(
    config: Config, rows: list[Mapping[str, Any]] | tuple[Mapping[str, Any], ...],
    environ: Mapping[str, str] | None = None,
) -> TenantLoad:
    """Turn tenant rows (from the file or from Supabase) into specs, isolating bad rows."""
    environ = os.environ if environ is None else environ
    specs: dict[str, TenantSpec] = {}
    errors: dict[str, tuple[str, str]] = {}
    for index, row in enumerate(rows):
        raw_id = row.get("id")
        label = str(raw_id) if raw_id not in (None, "") else f"#{index + 1}"
        name = str(row.get("name") or label)
        try:
            spec = tenant_spec_from_row(config, row, environ)
        except ConfigError as exc:
            errors[label] = (name, str(exc))
            continue
        if spec.id in specs or spec.id in errors:
            errors[spec.id] = (name, f"duplicate tenant id {spec.id!r}")
            specs.pop(spec.id, None)
            continue
        specs[spec.id] = spec
    return TenantLoad(specs=specs, errors=errors)


_TENANT_KEYS = {
    "id", "name", "host", "port", "security", "username", "password", "password_env",
    "folder", "ca_file", "allow_insecure",
}


def tenant_spec_from_row(config: Config, row: Mapping[str, Any], environ: Mapping[str, str]) -> TenantSpec:
    unknown = set(row) - _TENANT_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))}")
    tenant_id = _required_str(row, "id")
    if not set(tenant_id) <= TENANT_ID_CHARS:
        raise ConfigError("id may only use letters, digits, '-', '_' and '.'")
    host = _required_str(row, "host")
    username = _required_str(row, "username")
    security = row.get("security", "tls")
    if security not in SECURITY_MODES:
        raise ConfigError(f"security must be one of {', '.join(SECURITY_MODES)}")
    port = row.get("port", 993 if security == "tls" else 143)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError("port must be a number from 1 to 65535")
    password = _password(row, environ)
    ca_file = row.get("ca_file")
    if ca_file is not None:
        if not isinstance(ca_file, str):
            raise ConfigError("ca_file must be a path")
        ca_path = Path(ca_file)
        if not ca_path.is_absolute():
            ca_path = Path(config.base_dir) / ca_path
        if not ca_path.is_file():
            raise ConfigError(f"ca_file {ca_path} does not exist")
        ca_file = str(ca_path)
    folder = row.get("folder") or "INBOX"
    if not isinstance(folder, str):
        raise ConfigError("folder must be a string")
    allow_insecure = bool(row.get("allow_insecure", False))
    return TenantSpec(
        id=tenant_id,
        name=str(row.get("name") or tenant_id),
        host=host,
        port=port,
        security=security,
        username=username,
        password=password,
        folder=folder,
        ca_file=ca_file,
        allow_insecure=allow_insecure,
        imap=config.imap,
        handler=config.handler,
        state=config.state,
        heartbeat_interval=config.supervisor.heartbeat_interval,
        idle_heartbeat_interval=config.supervisor.idle_heartbeat_interval,
        shutdown_timeout=config.supervisor.shutdown_timeout,
        base_dir=config.base_dir,
    )


def _required_str(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"missing or empty field {key!r}")
    return value.strip()


def _password(row: Mapping[str, Any], environ: Mapping[str, str]) -> Secret:
    if "password_env" in row:
        var = row["password_env"]
        if not isinstance(var, str) or not var:
            raise ConfigError("password_env must name an environment variable")
        value = environ.get(var)
        if value is None:
            raise ConfigError(f"password environment variable {var} is not set")
        return Secret(value)
    value = row.get("password")
    if not isinstance(value, str) or value == "":
        raise ConfigError("needs password_env (or password)")
    return Secret(value)
