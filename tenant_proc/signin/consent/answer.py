"""What the browser and the device flow share: the scope they ask consent for, and the token
endpoint's answer to the redeemed code turned into a Consent.

The scope is the tenant's own (`[tenant.oauth] scope`, what its refresh grants will ask for)
plus what the consent needs on top: `openid` and `email` for an ID token naming the account;
Microsoft also `offline_access` (or no refresh token is issued) and `profile` (its ID token
carries `preferred_username` only with it: the ID token claims reference).
"""
from __future__ import annotations

from typing import Any

from tenant_proc.signin.consent.id_token import check_account
from tenant_proc.signin.consent.outcome import Consent, ConsentError
from tenant_proc.spec import OAuthSpec, Secret, TenantSpec

EXTRA_SCOPES = {
    "microsoft": ("offline_access", "openid", "profile", "email"),
    "google": ("openid", "email"),
}
NO_REFRESH_TOKEN = {
    "microsoft": "the scope must include offline_access",
    "google": "the consent must be asked with access_type=offline and prompt=consent, and the "
              "OAuth client must be of type Desktop app",
}


def consent_scope(oauth: OAuthSpec) -> str:
    words = oauth.scope.split()
    for extra in EXTRA_SCOPES.get(oauth.provider, ()):
        if extra not in words:
            words.append(extra)
    return " ".join(words)


def consent_from(spec: TenantSpec, answer: dict[str, Any]) -> Consent:
    """The refresh token of the answer, once its ID token shows the tenant's mailbox signed in."""
    assert spec.oauth is not None
    id_token = answer.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise ConsentError("the token endpoint sent no ID token, so the account cannot be checked: "
                           "nothing stored")
    account = check_account(spec, id_token)
    refresh = answer.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        hint = NO_REFRESH_TOKEN.get(spec.oauth.provider, "check the app's registration")
        raise ConsentError(f"signed in as {account}, but the token endpoint sent no refresh token "
                           f"({hint}): nothing stored")
    return Consent(Secret(refresh), account)
