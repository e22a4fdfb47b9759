"""What a `companies` row may say: a row is not the operator.

A SaaS's web app writes `companies` rows from what its customers type in, so a row is trusted
less than the config file. Unless the config allows it (`[tenants] trust_rows = true`, or
IDLE_SUPERVISOR_TENANTS_TRUST_ROWS=true), a row may not name anything of the host that runs the
supervisor, because the supervisor would then use it on the row's behalf:
- an environment variable (every `*_env` key): `oauth.client_secret_env =
  "SUPABASE_SERVICE_ROLE_KEY"` beside the row's own `token_url` had the service key POSTed there;
- a program (`oauth.provider = "command"`, `oauth.command`): any argv, run on the host;
- a file (every `*_file` key): `oauth.certificate_file` or `oauth.service_account_file` would
  have the operator's private key sign an assertion sent to the row's `token_url` (Google's
  domain-wide delegation: a key to every mailbox of the domain); `oauth.token_ca_file`,
  `ca_file` read a host path.
A row holds values instead: its password, client secret, refresh token, certificate PEM and
service-account JSON in their own columns, its `token_url`, `scope`, `tenant`, `client_id`,
`subject` and `token_timeout` in `oauth`. Such a row is refused for that company alone (one
line naming the company and the key); the config file's [[tenant]] tables keep every key.
"""
from __future__ import annotations

from typing import Any, Mapping

from supervisor.errors import ConfigError

TRUST_SETTING = "[tenants] trust_rows = true"
_NAMES = {"_env": "an environment variable", "_file": "a file"}


def refuse_untrusted(row: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first key through which `row` reaches into the host."""
    found = _host_reference(row)
    if found is not None:
        key, what = found
        raise ConfigError(f"{key}: a companies row may not name {what} of this host (rows are "
                          f"trusted less than the config file; {TRUST_SETTING} allows it)")


def _host_reference(row: Mapping[str, Any]) -> tuple[str, str] | None:
    for key in sorted(row, key=str):
        what = _named_by(str(key))
        if what is not None:
            return str(key), what
    oauth = row.get("oauth")
    if not isinstance(oauth, Mapping):
        return None
    if oauth.get("provider") == "command":
        return "oauth.provider", 'a program ("command")'
    for key in sorted(oauth, key=str):
        what = "a program" if key == "command" else _named_by(str(key))
        if what is not None:
            return f"oauth.{key}", what
    return None


def _named_by(key: str) -> str | None:
    return next((what for suffix, what in _NAMES.items() if key.endswith(suffix)), None)
