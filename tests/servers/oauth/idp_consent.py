"""The consent side of the identity-provider stand-in (tests/servers/oauth/idp.py): the authorize
endpoint a browser visits, the authorization-code grant with PKCE, ID tokens with the account's
claims, and (idp_device.py) the device flow, as Microsoft Entra ID and Google do them.

`IdentityProvider.consent` is a ConsentDesk:

    app = idp.consent.add_app("desktop-app")                     # a public client (Microsoft)
    url = idp.consent.microsoft_authorize_url("contoso.onmicrosoft.com")
    idp.consent.sign_in_as = "someone@personal.example"         # default: the login_hint
    idp.consent.decline = True                                   # the person clicks "Cancel"

* Authorize endpoint (`GET .../oauth2/v2.0/authorize`, Google's `/o/oauth2/v2/auth`): checks every
  parameter. An unknown client or a redirect URI that is not `http://127.0.0.1:PORT/` gets an
  error page and no redirect, as the providers do; any other problem (response_type not `code`,
  no state, no S256 code_challenge, no login_hint, a scope without the mail scope, `openid` or
  `email`) goes back to the redirect URI as `error=...`. Otherwise the person "consents": a 302
  to the redirect URI with `code` and `state`, or `error=access_denied` when `decline` is set.
  Microsoft issues a refresh token only with `offline_access`, Google only with
  `access_type=offline` and `prompt=consent`.
* Authorization-code grant at the token endpoint: the code is single-use (a second redemption
  is refused and revokes what the first one got, RFC 6749 4.1.2) and expires after
  `code_lifetime`; the client must authenticate as registered (a public client presenting any
  secret is refused with AADSTS700025); the redirect URI must be the authorize request's; the
  code_verifier must hash to the code_challenge. Each refusal carries the provider's wording.
* The tokens: an access token for the account's mailbox (Dovecot's introspection accepts it),
  a refresh token that the ordinary refresh grant (idp_grants.py) takes from then on (rotated
  on Microsoft), and an RS256 ID token whose claims follow the scope: Microsoft
  `preferred_username` with `profile`, `email` with `email`, `upn` when the account has one;
  Google `email` and `email_verified` with `email`.
"""
from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.servers.oauth.idp_grants import (
    GOOGLE_SCOPE,
    MICROSOFT_SCOPE,
    Grant,
    OAuthError,
)
from tests.servers.oauth.idp_keys import generate_rsa_key

if TYPE_CHECKING:
    from tests.servers.oauth.idp import IdentityProvider

CODE_GRANT = "authorization_code"
MAIL_SCOPES = {"microsoft": (MICROSOFT_SCOPE, "https://outlook.office365.com/IMAP.AccessAsUser.All"),
               "google": (GOOGLE_SCOPE,)}
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # BASE64URL of a SHA-256 digest, unpadded
LOOPBACK_REDIRECT = re.compile(r"http://127\.0\.0\.1:[0-9]{1,5}/")


@dataclass
class Page:
    """One answer of a consent endpoint, for idp_http.py to send."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ConsentApp:
    client_id: str
    client_secret: str | None  # None: a public client ("Mobile and desktop applications")
    provider: str              # microsoft | google


@dataclass
class Account:
    """Who signs in; the ID token's claims come from here."""

    address: str
    upn: str | None = None
    email: str | None = None  # default: the address


@dataclass
class PendingCode:
    app: ConsentApp
    account: Account
    redirect_uri: str
    challenge: str
    scope: str
    offline: bool
    expires_at: float
    grant: Grant | None = None  # set once redeemed


class ConsentDesk:
    """The browser side; idp_device.DeviceDesk adds the device flow and is what
    IdentityProvider.consent holds."""

    def __init__(self, idp: IdentityProvider) -> None:
        self._idp = idp
        self._lock: threading.Lock = idp._lock
        self.apps: dict[str, ConsentApp] = {}
        self.accounts: dict[str, Account] = {}
        self.sign_in_as: str | None = None   # the account the person picks (None: login_hint)
        self.decline = False                 # the person declines the consent
        self.code_lifetime = 600.0           # seconds (Microsoft: about 10 minutes)
        self.authorize_requests: list[dict[str, str]] = []
        self.grants: list[Grant] = []        # the refresh grants consents created
        self._codes: dict[str, PendingCode] = {}
        self._key: RSAKey | None = None

    # ------------------------------------------------------------------ registration

    def add_app(self, client_id: str, client_secret: str | None = None,
                provider: str = "microsoft") -> ConsentApp:
        app = ConsentApp(client_id, client_secret, provider)
        with self._lock:
            self.apps[client_id] = app
        return app

    def add_account(self, address: str, upn: str | None = None, email: str | None = None) -> Account:
        account = Account(address.lower(), upn, email)
        with self._lock:
            self.accounts[account.address] = account
        return account

    def microsoft_authorize_url(self, tenant: str = "contoso.onmicrosoft.com") -> str:
        return f"{self._idp.url}/{tenant}/oauth2/v2.0/authorize"

    @property
    def google_authorize_url(self) -> str:
        return f"{self._idp.url}/o/oauth2/v2/auth"

    # ------------------------------------------------------------------ HTTP entry points

    def get(self, target: str) -> Page | None:
        """A GET the consent side answers (None: not one of its paths)."""
        parts = urlsplit(target)
        if parts.path.endswith("/oauth2/v2.0/authorize") or parts.path == "/o/oauth2/v2/auth":
            with self._lock:
                return self._authorize(parts.path, parts.query)
        return None

    def post(self, path: str, form: dict[str, str]) -> Page | None:
        """A form POST the consent side answers, besides the token endpoint's (None: not one)."""
        return None

    def redeem(self, grant_type: str, form: dict[str, str]) -> dict[str, Any]:
        """The authorization-code grant at the token endpoint; the provider's lock is held."""
        return self._redeem_code(form)

    # ------------------------------------------------------------------ authorize endpoint

    def _authorize(self, path: str, query: str) -> Page:
        microsoft = path.endswith("/oauth2/v2.0/authorize")
        pairs = parse_qsl(query, keep_blank_values=True)
        params = dict(pairs)
        app = self.apps.get(params.get("client_id", ""))
        if app is None:
            return Page(400, (f"AADSTS700016: Application with identifier '{params.get('client_id')}' was "
                              "not found in the directory." if microsoft else
                              "Error 401: invalid_client. The OAuth client was not found.").encode())
        redirect_uri = params.get("redirect_uri", "")
        if not LOOPBACK_REDIRECT.fullmatch(redirect_uri):
            return Page(400, (f"AADSTS50011: The redirect URI '{redirect_uri}' specified in the request "
                              "does not match the redirect URIs configured for the application." if microsoft
                              else "Error 400: redirect_uri_mismatch").encode())

        def back(**answer: str) -> Page:
            if "state" in params:
                answer["state"] = params["state"]
            return Page(302, b"", headers={"Location": redirect_uri + "?" + urlencode(answer)})

        scope = params.get("scope", "").split()
        problem = (
            "parameters repeated" if len(params) != len(pairs) else
            "response_type must be code" if params.get("response_type") != "code" else
            "state is required" if not params.get("state") else
            "code_challenge_method must be S256" if params.get("code_challenge_method") != "S256" else
            "code_challenge is not an S256 challenge" if not CHALLENGE.fullmatch(params.get("code_challenge", "")) else
            "login_hint is required" if not params.get("login_hint") else None)
        if problem == "response_type must be code":
            return back(error="unsupported_response_type", error_description=problem)
        if problem is not None:
            return back(error="invalid_request", error_description=problem)
        if not set(MAIL_SCOPES[app.provider]) & set(scope) or not {"openid", "email"} <= set(scope):
            return back(error="invalid_scope", error_description=f"scope {' '.join(scope)} lacks the "
                                                                 "mail scope, openid or email")
        self.authorize_requests.append(params)
        if self.decline:
            return back(error="access_denied", error_description="The user declined to consent.")
        address = (self.sign_in_as or params["login_hint"]).lower()
        offline = "offline_access" in scope if app.provider == "microsoft" else (
            params.get("access_type") == "offline" and params.get("prompt") == "consent")
        code = "code-" + secrets.token_urlsafe(24)
        self._codes[code] = PendingCode(app, self.accounts.get(address, Account(address)), redirect_uri,
                                        params["code_challenge"], " ".join(scope), offline,
                                        time.monotonic() + self.code_lifetime)
        self._idp._remember(code)
        return back(code=code)

    # ------------------------------------------------------------------ authorization-code grant

    def _redeem_code(self, form: dict[str, str]) -> dict[str, Any]:
        pending = self._codes.get(form.get("code", ""))
        if pending is None:
            raise OAuthError(400, "invalid_grant", "AADSTS70000: The provided value for the 'code' "
                             "parameter is not valid.", "Malformed auth code.")
        if pending.grant is not None:
            self._revoke(pending.grant)  # RFC 6749 4.1.2: a replayed code revokes what it gave
            raise OAuthError(400, "invalid_grant", "AADSTS54005: OAuth2 Authorization code was already "
                             "redeemed, please retry with a new valid code or use an existing refresh "
                             "token.", "Bad Request")
        if time.monotonic() >= pending.expires_at:
            raise OAuthError(400, "invalid_grant", "AADSTS70008: The provided authorization code or "
                             "refresh token has expired due to inactivity.", "Bad Request")
        self._authenticate(pending.app, form)
        if form.get("redirect_uri") != pending.redirect_uri:
            if pending.app.provider == "google":
                raise OAuthError(400, "redirect_uri_mismatch", "", "Bad Request")
            raise OAuthError(400, "invalid_grant", "AADSTS70002: Error validating credentials. AADSTS50011: "
                             f"The reply address '{form.get('redirect_uri')}' does not match the reply "
                             f"address '{pending.redirect_uri}' provided when requesting Authorization code.",
                             "Bad Request")
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not secrets.compare_digest(digest, pending.challenge):
            raise OAuthError(400, "invalid_grant", "AADSTS50148: The code_verifier does not match the "
                             "code_challenge supplied in the authorization request for PKCE.",
                             "Invalid code verifier.")
        self._idp._remember(verifier)  # a secret of the client's: the leak tests look for it
        pending.grant = self._grant_for(pending.app, pending.account)
        return self._issue(pending.grant, pending.account, pending.scope, pending.offline)

    def _authenticate(self, app: ConsentApp, form: dict[str, str]) -> None:
        """The client as registered: a public one presents no secret at all (Entra ID refuses
        even an empty one), a confidential one its secret."""
        if form.get("client_id") != app.client_id:
            raise OAuthError(400, "invalid_grant", "AADSTS700005: The provided authorization code is "
                             "intended for another application.", "Unauthorized")
        if app.client_secret is None:
            if "client_secret" in form:
                raise OAuthError(401, "invalid_client", "AADSTS700025: Client is public so neither "
                                 "'client_assertion' nor 'client_secret' should be presented.", "Unauthorized")
        elif not secrets.compare_digest(form.get("client_secret", "").encode(), app.client_secret.encode()):
            raise OAuthError(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.",
                             "Unauthorized")

    # ------------------------------------------------------------------ tokens

    def _revoke(self, grant: Grant) -> None:
        grant.revoked = True
        for token in [t for t in self._idp._tokens.values() if t.grant is grant]:
            del self._idp._tokens[token.value]

    def _grant_for(self, app: ConsentApp, account: Account) -> Grant:
        grant = Grant("refresh_token", app.client_id, account.address, client_secret=app.client_secret,
                      rotate=app.provider == "microsoft")
        self._idp._grants.append(grant)
        self.grants.append(grant)
        return grant

    def _issue(self, grant: Grant, account: Account, scope: str, offline: bool) -> dict[str, Any]:
        answer = {**self._idp._token_answer(grant), "scope": scope,
                  "id_token": self._id_token(grant, account, scope.split())}
        if offline:
            self._idp._issue_refresh(grant)
            answer["refresh_token"] = grant.refresh_token
        return answer

    def _id_token(self, grant: Grant, account: Account, scope: list[str]) -> str:
        app = self.apps[grant.client_id]
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": app.client_id, "iat": now, "nbf": now, "exp": now + 3600,
            "sub": hashlib.sha256(f"{account.address}/{app.client_id}".encode()).hexdigest()[:32],
            "iss": f"{self._idp.url}/v2.0" if app.provider == "microsoft" else "https://accounts.google.com",
        }
        email = account.email or account.address
        if app.provider == "microsoft":
            if "profile" in scope:
                claims.update(preferred_username=account.address, name=account.address.split("@")[0])
            if account.upn:
                claims["upn"] = account.upn
            if "email" in scope:
                claims["email"] = email
        elif "email" in scope:
            claims.update(email=email, email_verified=True)
        if self._key is None:
            self._key = RSAKey.import_key(generate_rsa_key().private_pem)
        token = jwt.encode({"alg": "RS256", "kid": "stand-in"}, claims, self._key)
        self._idp._remember(token)
        return token
