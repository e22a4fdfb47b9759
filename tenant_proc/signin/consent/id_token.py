"""Whose consent is it: the account an ID token names, against the tenant's username.

A customer who signs in with their personal account instead of `support@…` is the most common
onboarding mistake; its refresh token would sign the company in to the wrong mailbox (or fail
later, far from the cause). The ID token's `preferred_username` or `email` claim (Microsoft:
also `upn`) must equal the tenant's username, case-insensitively.

The signature is not verified, on purpose. The ID token comes straight from the token endpoint
in the answer to our own code (or device code) redemption, over TLS verified against the
endpoint's certificate (or over loopback), the case OpenID Connect Core 1.0 3.1.3.7 (6) names:
"the TLS server validation MAY be used to validate the issuer in place of checking the token
signature". Verifying it would mean fetching and trusting the provider's JWKS over the same TLS,
which proves nothing more; and this check guards against a person's mistake, not an attacker,
who would have to control the token endpoint anyway. `aud` is still checked: an ID token for
another app is a misconfiguration worth saying.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Mapping

from tenant_proc.signin.consent.outcome import ConsentError, shown
from tenant_proc.spec import TenantSpec

MAX_ID_TOKEN = 16 * 1024  # characters; real ones are 1-3 KiB
ACCOUNT_CLAIMS = {
    "microsoft": ("preferred_username", "upn", "email"),
    "google": ("preferred_username", "email"),
}


def claims_of(id_token: str) -> dict[str, Any]:
    """The payload of a JWT (its middle part), or ConsentError."""
    parts = id_token.split(".")
    if len(id_token) > MAX_ID_TOKEN or len(parts) != 3:
        raise ConsentError("the ID token is not a JWT: the account cannot be checked, nothing stored")
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise ConsentError("the ID token's claims cannot be read: the account cannot be checked, "
                           "nothing stored") from None
    if not isinstance(claims, dict):
        raise ConsentError("the ID token's claims are not an object: nothing stored")
    return claims


def accounts_named(claims: Mapping[str, Any], provider: str) -> list[str]:
    """The addresses the claims give for the person who signed in, in claim order. An `email`
    the provider marks unverified (`email_verified: false`) proves nothing and is left out."""
    found: list[str] = []
    for claim in ACCOUNT_CLAIMS.get(provider, ("preferred_username", "email")):
        value = claims.get(claim)
        if claim == "email" and claims.get("email_verified") is False:
            continue
        if isinstance(value, str) and value.strip() and value.strip() not in found:
            found.append(value.strip())
    return found


def check_account(spec: TenantSpec, id_token: str) -> str:
    """The address that matched the tenant's username, or ConsentError naming both."""
    assert spec.oauth is not None
    claims = claims_of(id_token)
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if spec.oauth.client_id not in audiences:
        raise ConsentError(f"the ID token is for another app (aud {shown(audience, 80)}, client_id "
                           f"{spec.oauth.client_id}): check client_id; nothing stored")
    names = accounts_named(claims, spec.oauth.provider)
    wanted = spec.username.strip().casefold()
    for name in names:
        if name.casefold() == wanted:
            return name
    if not names:
        claim_list = "/".join(ACCOUNT_CLAIMS.get(spec.oauth.provider, ()))
        raise ConsentError(f"the ID token names no account ({claim_list}), so it cannot be checked "
                           f"against {spec.username}: nothing stored")
    raise ConsentError(f"signed in as {shown(names[0], 120)}, but tenant {spec.id}'s mailbox is "
                       f"{spec.username}: nothing stored; sign in again as {spec.username}")
