"""Token providers: each turns a tenant's [tenant.oauth] settings into an access token.

microsoft.py, google.py and command.py implement the contract in base.py; the grants themselves
go through authlib (http.py); each provider only says which grant, with which credentials, to
which endpoint. provider_for() picks one by name and imports it on first use.
"""
from __future__ import annotations

from typing import Callable

from tenant_proc.signin.providers.base import Fetch
from tenant_proc.spec import TenantSpec


def provider_for(spec: TenantSpec, keepalive: Callable[[], None] = lambda: None) -> Fetch:
    """The fetch function of the tenant's provider (imports its module on first use).
    keepalive: called at least every second while a token command runs."""
    assert spec.oauth is not None
    provider = spec.oauth.provider
    if provider == "microsoft":
        from tenant_proc.signin.providers import microsoft
        return lambda refresh: microsoft.fetch(spec, refresh)
    if provider == "google":
        from tenant_proc.signin.providers import google
        return lambda refresh: google.fetch(spec, refresh)
    if provider == "command":
        from tenant_proc.signin.providers import command
        return lambda refresh: command.fetch(spec, keepalive)
    raise ValueError(f"unknown OAuth provider {provider!r}")
