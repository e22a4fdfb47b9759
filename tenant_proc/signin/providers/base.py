"""Token providers: each turns a tenant's [tenant.oauth] settings into an access token.

A provider is a callable `fetch(refresh_token)` returning a TokenResponse, raising FatalError
(the operator must act) or ConnectionLost (try again later) with a one-line reason that holds
no secret. The grants themselves go through authlib (providers/http.py); this package only
says which grant, with which credentials, to which endpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tenant_proc.spec import Secret, TenantSpec

DEFAULT_LIFETIME = 3600.0  # an answer without expires_in: the providers' usual hour


@dataclass(frozen=True)
class TokenResponse:
    access_token: Secret
    lifetime: float  # seconds from the moment of the answer
    refresh_token: Secret | None = None  # set when the endpoint rotated the refresh token


Fetch = Callable[[Secret | None], TokenResponse]


def provider_for(spec: TenantSpec) -> Fetch:
    """The fetch function of the tenant's provider (imports its module on first use)."""
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
        return lambda refresh: command.fetch(spec)
    raise ValueError(f"unknown OAuth provider {provider!r}")


def uses_refresh_token(spec: TenantSpec) -> bool:
    return spec.oauth is not None and spec.oauth.flow == "refresh_token"
