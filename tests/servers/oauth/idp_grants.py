"""The token grants of the identity-provider stand-in (tests/servers/oauth/idp.py), checked as
Microsoft Entra ID and Google check them, and the tokens they issue.

* `Grant`: one thing that may obtain tokens (an app, a delegated consent, a service account);
  `AccessToken`: one issued access token; `OAuthError`: one error answer of the token endpoint,
  with Microsoft's (AADSTS) and Google's wording.
* `GrantHandlers`, a mixin of IdentityProvider: `_grant()` answers one token request by
  ``grant_type``: ``client_credentials`` (client id and secret, form or HTTP Basic, and the
  scope), ``refresh_token`` (rotated when the grant says so) and
  ``urn:ietf:params:oauth:grant-type:jwt-bearer`` (a service account's RS256 assertion checked
  against its public key: iss/aud/scope/sub/exp, at most MAX_ASSERTION_LIFETIME long, CLOCK_SKEW
  leeway); revoked grants are refused; issued access and refresh tokens are recorded.
  Every method runs with the provider's lock held.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.servers.oauth.idp_http import assertion_issuer, basic_password, basic_user

MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 3600  # Google: "Token must be a short-lived token (60 minutes)"
CLOCK_SKEW = 300               # seconds of iat/exp leeway, as Google allows


class OAuthError(Exception):
    """One error answer of the token endpoint."""

    def __init__(self, status: int, error: str, microsoft: str, google: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error
        self.microsoft, self.google = microsoft, google

    def body(self, microsoft_shaped: bool) -> dict[str, str]:
        return {"error": self.error,
                "error_description": self.microsoft if microsoft_shaped else self.google}


@dataclass
class Grant:
    """One thing that may obtain tokens: an app (client credentials), a delegated consent
    (refresh token) or a service account (JWT bearer). `mailbox` is whom its tokens sign in as."""

    kind: str                       # client_credentials | refresh_token | service_account
    client_id: str                  # for a service account: its client_email (the JWT iss)
    mailbox: str
    client_secret: str | None = None
    refresh_token: str | None = None
    rotate: bool = True
    public_key: RSAKey | None = None
    subjects: frozenset[str] = frozenset()   # service account: mailboxes it may act for
    scope: str | None = None
    revoked: bool = False
    refresh_history: list[str] = field(default_factory=list)  # every refresh token ever issued


@dataclass
class AccessToken:
    value: str
    mailbox: str
    grant: Grant
    expires_at: float  # time.monotonic()


class GrantHandlers:
    """The token endpoint's grant checks and token issuing; the caller holds the lock."""

    # IdentityProvider's (tests/servers/oauth/idp.py): annotations only, nothing defined at runtime.
    token_lifetime: float
    _grants: list[Grant]
    _by_refresh: dict[str, Grant]
    _tokens: dict[str, AccessToken]
    _issued: list[str]
    _issued_access: list[tuple[str, str]]

    if TYPE_CHECKING:
        @property
        def url(self) -> str: ...

    def _grant(self, path: str, grant_type: str, form: dict[str, str], authorization: str | None) -> dict[str, Any]:
        if grant_type == "client_credentials":
            grant = self._authenticate_client(form, authorization, "client_credentials")
            if form.get("scope") != grant.scope:
                raise OAuthError(400, "invalid_scope",
                                 f"AADSTS1002012: The provided value for scope {form.get('scope')} is not valid.",
                                 "Invalid OAuth scope or ID token audience provided.")
            self._check_not_revoked(grant, client_credentials=True)
            return self._token_answer(grant)
        if grant_type == "refresh_token":
            return self._refresh(form, authorization)
        if grant_type == JWT_BEARER:
            return self._jwt_bearer(path, form)
        raise OAuthError(400, "unsupported_grant_type",
                         f"AADSTS70003: The app requested an unsupported grant type '{grant_type}'.",
                         f"Invalid grant_type: {grant_type}")

    def _authenticate_client(self, form: dict[str, str], authorization: str | None, kind: str) -> Grant:
        client_id = form.get("client_id") or basic_user(authorization) or ""
        secret = form.get("client_secret") or basic_password(authorization)
        grant = next((g for g in self._grants if g.kind == kind and g.client_id == client_id), None)
        if grant is None:
            raise OAuthError(400, "unauthorized_client",
                             f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory.",
                             "The OAuth client was not found.")
        if not secrets.compare_digest((secret or "").encode(), (grant.client_secret or "").encode()):
            raise OAuthError(401, "invalid_client",
                             "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent "
                             "in the request is the client secret value, not the client secret ID.",
                             "Unauthorized")
        return grant

    def _refresh(self, form: dict[str, str], authorization: str | None) -> dict[str, Any]:
        grant = self._by_refresh.get(form.get("refresh_token", ""))
        if grant is None:
            raise OAuthError(400, "invalid_grant",
                             "AADSTS70000: The provided value for the 'refresh_token' is not valid: "
                             "it was already used (rotated) or never issued.",
                             "Bad Request")
        client_id = form.get("client_id") or basic_user(authorization) or ""
        secret = form.get("client_secret") or basic_password(authorization)
        if grant.client_secret is None and ("client_secret" in form or basic_password(authorization) is not None):
            # A public client's refresh token (a desktop registration, the device flow): Entra ID
            # refuses any secret presented with it, an empty one included.
            raise OAuthError(401, "invalid_client", "AADSTS700025: Client is public so neither "
                             "'client_assertion' nor 'client_secret' should be presented.", "Unauthorized")
        if client_id != grant.client_id or (grant.client_secret is not None and not secrets.compare_digest(
                (secret or "").encode(), grant.client_secret.encode())):
            raise OAuthError(401, "invalid_client",
                             "AADSTS7000215: Invalid client secret provided.", "Unauthorized")
        self._check_not_revoked(grant)
        if grant.rotate:
            del self._by_refresh[form["refresh_token"]]
            self._issue_refresh(grant)
            return {**self._token_answer(grant), "refresh_token": grant.refresh_token}
        return self._token_answer(grant)

    def _jwt_bearer(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        assertion = form.get("assertion", "")
        issuer = assertion_issuer(form)
        grant = next((g for g in self._grants if g.kind == "service_account" and g.client_id == issuer), None)
        if grant is None or grant.public_key is None:
            raise OAuthError(400, "invalid_grant", "AADSTS50027: JWT token is invalid or malformed.",
                             "Invalid grant: account not found")
        try:
            token = jwt.decode(assertion, grant.public_key, algorithms=["RS256"])
        except (jose_errors.JoseError, ValueError):
            raise OAuthError(400, "invalid_grant", "AADSTS7000274: Invalid JWT signature.",
                             "Invalid JWT Signature.") from None
        now = int(time.time())
        claims = token.claims
        registry = jwt.JWTClaimsRegistry(
            now=now, leeway=CLOCK_SKEW,
            iss={"essential": True, "value": grant.client_id},
            aud={"essential": True, "value": self.url + path},
            exp={"essential": True}, iat={"essential": True}, scope={"essential": True})
        try:
            registry.validate(claims)
            if int(claims["exp"]) - int(claims["iat"]) > MAX_ASSERTION_LIFETIME:
                raise ValueError("lifetime")
        except (jose_errors.JoseError, ValueError, TypeError):
            raise OAuthError(400, "invalid_grant", "AADSTS50013: Assertion failed signature validation.",
                             "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                             "reasonable timeframe. Check your iat and exp values.") from None
        subject = str(claims.get("sub", "")).lower()
        if grant.scope not in str(claims["scope"]).split() or subject not in grant.subjects:
            raise OAuthError(401, "unauthorized_client",
                             "AADSTS700027: Client assertion failed signature validation.",
                             "Client is unauthorized to retrieve access tokens using this method, or "
                             "client not authorized for any of the scopes requested.")
        self._check_not_revoked(grant)
        return self._token_answer(grant, mailbox=subject)

    def _check_not_revoked(self, grant: Grant, client_credentials: bool = False) -> None:
        if not grant.revoked:
            return
        if client_credentials:
            raise OAuthError(400, "unauthorized_client",
                             f"AADSTS7000112: Application '{grant.client_id}' is disabled.",
                             "The OAuth client was disabled.")
        raise OAuthError(400, "invalid_grant",
                         "AADSTS50173: The provided grant has expired due to it being revoked, a fresh "
                         "auth token is needed. The user might have changed or reset their password.",
                         "Token has been expired or revoked.")

    def _token_answer(self, grant: Grant, mailbox: str | None = None) -> dict[str, Any]:
        token = self._issue_access(grant, None, mailbox)
        return {"access_token": token.value, "token_type": "Bearer",
                "expires_in": max(1, round(token.expires_at - time.monotonic()))}

    def _issue_access(self, grant: Grant, lifetime: float | None, mailbox: str | None = None) -> AccessToken:
        value = "at-" + secrets.token_urlsafe(24)
        token = AccessToken(value, mailbox or grant.mailbox, grant,
                            time.monotonic() + (self.token_lifetime if lifetime is None else lifetime))
        self._tokens[value] = token
        self._remember(value)
        self._issued_access.append((value, token.mailbox))
        return token

    def _issue_refresh(self, grant: Grant) -> None:
        grant.refresh_token = "rt-" + secrets.token_urlsafe(24)
        grant.refresh_history.append(grant.refresh_token)
        self._by_refresh[grant.refresh_token] = grant
        self._remember(grant.refresh_token)

    def _remember(self, value: str) -> None:
        self._issued.append(value)
