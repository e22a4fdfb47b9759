"""Tenant rows (a [[tenant]] table of the config file, or a Supabase companies row) -> TenantSpec.

Both tenant sources end here, so a company row and a file entry are validated the same way and
feed the same reload diff. A bad row becomes a per-tenant error: that one tenant is shown as
failed with the reason, every other tenant runs.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from supervisor.config.env import skip_classes, strict_bool
from supervisor.config.timeouts import request_bound
from supervisor.errors import ConfigError
from supervisor.tenants.oauth_rows import auth_method, oauth_spec_from_row
from supervisor.tenants.row_trust import refuse_untrusted
from tenant_proc.spec import SECURITY_MODES, Secret, TenantSpec

if TYPE_CHECKING:
    from supervisor.config.settings import Config

_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
TENANT_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class TenantLoad:
    """Result of turning tenant rows into specs: good specs and per-tenant errors."""

    specs: dict[str, TenantSpec]
    errors: dict[str, tuple[str, str]]  # id -> (name, reason)


def build_tenant_specs(
    config: Config, rows: list[Mapping[str, Any]] | tuple[Mapping[str, Any], ...],
    environ: Mapping[str, str] | None = None, trusted: bool = True,
) -> TenantLoad:
    """Turn tenant rows (from the file or from Supabase) into specs, isolating bad rows.
    `trusted`: the rows may name environment variables, programs and files of this host (the
    config file's tables; `companies` rows only with [tenants] trust_rows, see row_trust.py)."""
    environ = os.environ if environ is None else environ
    specs: dict[str, TenantSpec] = {}
    errors: dict[str, tuple[str, str]] = {}
    for index, row in enumerate(rows):
        raw_id = row.get("id")
        label = str(raw_id) if raw_id not in (None, "") else f"#{index + 1}"
        name = str(row.get("name") or label)
        try:
            if not trusted:
                refuse_untrusted(row)
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
    "folder", "ca_file", "allow_insecure", "auth", "oauth", "webhook_url", "dedupe_window",
    "addresses", "skip",
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
    auth = auth_method(row)
    bound = request_bound(config.supervisor)
    oauth = oauth_spec_from_row(row, environ, config.base_dir, bound) if auth != "password" else None
    # OAuth tenants need no password; one given anyway is kept (unused).
    password = _password(row, environ) if auth == "password" or _has_password(row) else Secret("")
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
    allow_insecure = strict_bool(row.get("allow_insecure", False), "allow_insecure")
    webhook_url = row.get("webhook_url") or None
    if webhook_url is not None and (
            not isinstance(webhook_url, str) or not webhook_url.startswith(("http://", "https://"))):
        raise ConfigError("webhook_url must be an http:// or https:// URL")
    imap = config.imap
    if row.get("dedupe_window") is not None:
        # Part of spec.imap, so the reload diff sees a changed window and restarts this tenant only.
        imap = replace(imap, dedupe_window=_seconds(row["dedupe_window"], "dedupe_window"))
    if row.get("skip") is not None:
        # Replaces [imap] skip for this tenant (an empty list: hand everything over); part of
        # spec.imap, so a changed list restarts this tenant only.
        imap = replace(imap, skip=skip_classes(row["skip"], "skip"))
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
        imap=imap,
        handler=config.handler,
        state=config.state,
        heartbeat_interval=config.supervisor.heartbeat_interval,
        idle_heartbeat_interval=config.supervisor.idle_heartbeat_interval,
        shutdown_timeout=config.supervisor.shutdown_timeout,
        base_dir=config.base_dir,
        auth=auth,
        oauth=oauth,
        webhook_url=webhook_url,
        request_bound=bound,
        addresses=_addresses(row.get("addresses")),
    )


def _required_str(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"missing or empty field {key!r}")
    return value.strip()


def _seconds(value: Any, key: str) -> float:
    """A number of seconds >= 0; text (a Supabase text column, a hand-edited row) only when it
    is exactly a decimal number, never guessed ("1h", "", "nan" are refused)."""
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value.strip()):
            raise ConfigError(f"{key} must be a number of seconds, not {value[:40]!r}")
        number = float(value.strip())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ConfigError(f"{key} must be a number of seconds, not {str(value)[:40]!r}")
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{key} must be a number of seconds >= 0, not {str(value)[:40]!r}")
    return number


def _addresses(value: Any) -> tuple[str, ...]:
    """`addresses`: the mailbox's other addresses and aliases (a list, or one text of them
    separated by commas), lower case, for from_self."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError("addresses must be a list of email addresses")
    found = [v.strip().strip("<>").strip().lower() for v in value if v.strip()]
    bad = [a for a in found if "@" not in a or any(c.isspace() for c in a)]
    if bad:
        raise ConfigError(f"addresses: {bad[0][:80]!r} is not an email address")
    return tuple(dict.fromkeys(found))


def _has_password(row: Mapping[str, Any]) -> bool:
    return bool(row.get("password")) or "password_env" in row


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
