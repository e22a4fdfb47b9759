"""The `auth` key and the [tenant.oauth] table of a tenant row -> OAuthSpec (validated, defaults in).

Same rules for a file's [[tenant]] and a Supabase companies row (companies.py maps its
columns onto these keys), except that a row may not name environment variables, programs or
files of the host unless [tenants] trust_rows says so (row_trust.py, checked before this). Secrets are read from the environment (`*_env`) or the row and kept
as Secret; key files are checked to exist here and read by the tenant process when it signs in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from supervisor.config.settings import SupervisorSettings
from supervisor.config.timeouts import request_bound
from supervisor.errors import ConfigError
from tenant_proc.loopback import is_loopback
from tenant_proc.spec import AUTH_METHODS, OAuthSpec, Secret

FLOWS = {
    "microsoft": ("client_credentials", "refresh_token"),
    "google": ("service_account", "refresh_token"),
    "command": ("",),
}
DEFAULT_TOKEN_URLS = {
    "microsoft": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
    "google": "https://oauth2.googleapis.com/token",
}
# `idle-supervisor authorize` (the one-time consent): the browser flow's authorization endpoint
# and the device flow's device authorization endpoint. Google allows no device flow for mail.
DEFAULT_AUTHORIZE_URLS = {
    "microsoft": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
    "google": "https://accounts.google.com/o/oauth2/v2/auth",
}
DEFAULT_DEVICE_URLS = {
    "microsoft": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode",
}
DEFAULT_SCOPES = {
    ("microsoft", "client_credentials"): "https://outlook.office365.com/.default",
    ("microsoft", "refresh_token"): "https://outlook.office365.com/.default offline_access",
    ("google", "service_account"): "https://mail.google.com/",
    ("google", "refresh_token"): "https://mail.google.com/",
    ("command", ""): "",
}
OAUTH_KEYS = {
    "provider", "flow", "tenant", "client_id", "client_secret", "client_secret_env",
    "refresh_token", "refresh_token_env", "certificate_file", "certificate",
    "service_account_file", "service_account_json", "subject", "command", "token_url", "scope",
    "token_ca_file", "token_timeout", "authorize_url", "device_url",
}
DEFAULT_TOKEN_TIMEOUT = 10.0
# A token request (or command run) is one step without a heartbeat in it: token_timeout may not
# exceed the request bound derived from heartbeat_timeout (12.5 s at the defaults); the caller
# passes the bound of its config, this is the one of the default settings.
DEFAULT_MAX_TOKEN_TIMEOUT = request_bound(SupervisorSettings())


def auth_method(row: Mapping[str, Any]) -> str:
    auth = row.get("auth", "password")
    if auth not in AUTH_METHODS:
        raise ConfigError(f"auth must be one of {', '.join(AUTH_METHODS)}")
    if auth == "password" and row.get("oauth") not in (None, {}):
        raise ConfigError("[tenant.oauth] is set but auth is \"password\": set auth = \"xoauth2\" "
                          "or \"oauthbearer\"")
    return str(auth)


def oauth_spec_from_row(row: Mapping[str, Any], environ: Mapping[str, str], base_dir: str,
                        max_token_timeout: float = DEFAULT_MAX_TOKEN_TIMEOUT) -> OAuthSpec:
    table = row.get("oauth")
    if not isinstance(table, Mapping) or not table:
        raise ConfigError(f"auth = {row.get('auth')!r} needs a [tenant.oauth] table")
    unknown = set(table) - OAUTH_KEYS
    if unknown:
        raise ConfigError(f"unknown [tenant.oauth] key(s) {', '.join(sorted(unknown))}")
    provider = table.get("provider")
    if provider not in FLOWS:
        raise ConfigError(f"oauth.provider must be one of {', '.join(FLOWS)}")
    flow = table.get("flow", FLOWS[provider][0])
    if flow not in FLOWS[provider]:
        raise ConfigError(f"oauth.flow for {provider} must be one of {', '.join(FLOWS[provider])}"
                          if provider != "command" else "oauth.flow is not used with provider command")
    text = {key: _optional_str(table, key) for key in ("tenant", "client_id", "subject")}
    client_secret = _secret(table, "client_secret", environ)
    refresh_token = _secret(table, "refresh_token", environ)
    certificate = _secret(table, "certificate", {})
    service_account_json = _secret(table, "service_account_json", {})
    files = {key: _file(table, key, base_dir)
             for key in ("certificate_file", "service_account_file", "token_ca_file")}
    command = _command(table) if provider == "command" else ()

    if provider == "microsoft" and not text["tenant"]:
        raise ConfigError("oauth.tenant (directory id or domain) is required for microsoft")
    if provider != "command" and not text["client_id"] and flow != "service_account":
        raise ConfigError("oauth.client_id is required")
    # flow refresh_token without a configured refresh token is valid: `idle-supervisor authorize`
    # stores one in the state backend (signin/storage.py), and until then the tenant fails with
    # a line saying to run it.
    if flow == "refresh_token" and provider == "google" and client_secret is None:
        raise ConfigError("oauth google refresh_token needs client_secret_env (or client_secret)")
    if flow == "client_credentials" and client_secret is None and certificate is None \
            and files["certificate_file"] is None:
        raise ConfigError("oauth client_credentials needs client_secret_env, client_secret, "
                          "certificate_file or certificate")
    if flow == "service_account" and service_account_json is None and files["service_account_file"] is None:
        raise ConfigError("oauth service_account needs service_account_file (or service_account_json)")

    token_url = _endpoint_url(table, "token_url", DEFAULT_TOKEN_URLS, provider, text["tenant"])
    authorize_url = _endpoint_url(table, "authorize_url", DEFAULT_AUTHORIZE_URLS, provider, text["tenant"])
    if provider == "google" and table.get("device_url"):
        raise ConfigError("oauth.device_url is for microsoft only: Google allows no device flow for "
                          "mail scopes (idle-supervisor authorize uses the browser flow)")
    device_url = _endpoint_url(table, "device_url", DEFAULT_DEVICE_URLS, provider, text["tenant"])
    scope = table.get("scope", DEFAULT_SCOPES[(provider, flow)])
    if not isinstance(scope, str):
        raise ConfigError("oauth.scope must be a string")
    return OAuthSpec(
        provider=provider, flow=flow, token_url=token_url, scope=scope,
        tenant=text["tenant"], client_id=text["client_id"], client_secret=client_secret,
        refresh_token=refresh_token, certificate_file=files["certificate_file"],
        certificate=certificate, service_account_file=files["service_account_file"],
        service_account_json=service_account_json, subject=text["subject"], command=command,
        token_ca_file=files["token_ca_file"], token_timeout=_timeout(table, max_token_timeout),
        authorize_url=authorize_url, device_url=device_url,
    )


def _endpoint_url(table: Mapping[str, Any], key: str, defaults: Mapping[str, str], provider: str,
                  tenant: str) -> str:
    """An identity-provider endpoint (token_url, authorize_url, device_url): the configured URL or
    the provider's default; https, or http to a loopback host only. "" where none applies."""
    if provider == "command" or provider not in defaults:
        return ""
    url = table.get(key) or defaults[provider].format(tenant=tenant)
    if not isinstance(url, str):
        raise ConfigError(f"oauth.{key} must be a URL")
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise ConfigError(f"oauth.{key} {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(f"oauth.{key} must use https (http only on a loopback host)")
    return url


def _secret(table: Mapping[str, Any], key: str, environ: Mapping[str, str]) -> Secret | None:
    env_key = f"{key}_env"
    if env_key in table:
        var = table[env_key]
        if not isinstance(var, str) or not var:
            raise ConfigError(f"oauth.{env_key} must name an environment variable")
        value = environ.get(var)
        if not value:
            raise ConfigError(f"environment variable {var} (oauth.{env_key}) is not set")
        return Secret(value)
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"oauth.{key} must be a non-empty string")
    return Secret(value)


def _optional_str(table: Mapping[str, Any], key: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"oauth.{key} must be a string")
    return value.strip()


def _file(table: Mapping[str, Any], key: str, base_dir: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"oauth.{key} must be a path")
    path = Path(value)
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise ConfigError(f"oauth.{key} {path} does not exist")
    return str(path)


def _command(table: Mapping[str, Any]) -> tuple[str, ...]:
    command = table.get("command")
    if not isinstance(command, (list, tuple)) or not command or \
            not all(isinstance(arg, str) and arg for arg in command):
        raise ConfigError("oauth.command must be a list of strings (argv, no shell)")
    return tuple(command)


def _timeout(table: Mapping[str, Any], cap: float) -> float:
    """token_timeout: unset, the default or the cap when that is lower (a lowered
    heartbeat_timeout means "notice hangs sooner", not "refuse the tenant"); set, at most the cap."""
    value = table.get("token_timeout")
    if value is None:
        return min(DEFAULT_TOKEN_TIMEOUT, cap)
    low = min(1.0, cap)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= cap:
        raise ConfigError(
            f"oauth.token_timeout must be a number of seconds from {low:g} to {cap:g}: a token "
            "request holds the tenant's heartbeat, so it may take at most (heartbeat_timeout - "
            "heartbeat_interval) / 2; raise [supervisor] heartbeat_timeout for a longer one")
    return float(value)
