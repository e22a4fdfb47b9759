"""What every token provider answers: the contract the provider modules implement.

A provider is a callable `fetch(refresh_token)` returning a TokenResponse, raising FatalError
(the operator must act) or ConnectionLost (try again later) with a one-line reason that holds
no secret.
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


def uses_refresh_token(spec: TenantSpec) -> bool:
    return spec.oauth is not None and spec.oauth.flow == "refresh_token"
