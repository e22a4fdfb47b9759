"""The device flow of the identity-provider stand-in (RFC 8628, as Microsoft Entra ID does it):
DeviceDesk is idp_consent.ConsentDesk plus the device endpoints, and is what
`IdentityProvider.consent` holds.

* `POST .../oauth2/v2.0/devicecode` (client_id, scope): a public client only (a client with a
  secret gets AADSTS7000218, as an app without "Allow public client flows"); answers
  device_code, user_code, verification_uri (`/devicelogin` here), expires_in
  (`device_lifetime`) and interval (`device_interval`).
* The person: `POST /devicelogin` with `user_code`, `account` and `decision` (`approve` or
  `decline`), what typing the code into the verification page and signing in amounts to.
* The token endpoint's `urn:ietf:params:oauth:grant-type:device_code` grant: `slow_down` when a
  poll comes sooner than the interval (which then grows by 5 s, RFC 8628 3.5) or while
  `forced_slow_downs` lasts; `authorization_pending` until the person acted;
  `authorization_declined` when they declined; `expired_token` after expires_in;
  `bad_verification_code` for a code it never gave (or already redeemed). Approved: the same
  tokens as a redeemed authorization code. Every poll's time is kept (`DeviceRequest.polls`).
"""
from __future__ import annotations

import json
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any

from tests.servers.oauth.idp_consent import (
    CODE_GRANT,
    MAIL_SCOPES,
    Account,
    ConsentApp,
    ConsentDesk,
    Page,
)
from tests.servers.oauth.idp_grants import OAuthError

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
GRANT_TYPES = (CODE_GRANT, DEVICE_GRANT)  # what IdentityProvider.handle_token hands to the desk
SLOW_DOWN_STEP = 5
EARLY_TOLERANCE = 0.2  # seconds: a poll this much before the interval is still on time


@dataclass
class DeviceRequest:
    device_code: str
    user_code: str
    app: ConsentApp
    scope: str
    expires_at: float
    interval: float
    state: str = "pending"  # pending | approved | declined | redeemed
    account: Account | None = None
    polls: list[float] = field(default_factory=list)  # time.monotonic() of each poll


class DeviceDesk(ConsentDesk):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.device_interval = 1      # seconds the device authorization answer asks for
        self.device_lifetime = 900    # seconds before a device code expires (Microsoft: 15 min)
        self.forced_slow_downs = 0    # the next polls answered slow_down whatever their timing
        self.device_requests: list[DeviceRequest] = []

    def microsoft_device_url(self, tenant: str = "contoso.onmicrosoft.com") -> str:
        return f"{self._idp.url}/{tenant}/oauth2/v2.0/devicecode"

    def post(self, path: str, form: dict[str, str]) -> Page | None:
        if path.endswith("/oauth2/v2.0/devicecode"):
            with self._lock:
                return self._device_authorization(form)
        if path == "/devicelogin":
            with self._lock:
                return self._device_login(form)
        return super().post(path, form)

    def get(self, target: str) -> Page | None:
        if target.split("?")[0] == "/devicelogin":
            return Page(200, b"Enter the code shown on your device.\n")
        return super().get(target)

    def redeem(self, grant_type: str, form: dict[str, str]) -> dict[str, Any]:
        if grant_type == DEVICE_GRANT:
            return self._poll_device(form)
        return super().redeem(grant_type, form)

    # ------------------------------------------------------------------ endpoints

    def _device_authorization(self, form: dict[str, str]) -> Page:
        app = self.apps.get(form.get("client_id", ""))
        if app is None or app.provider != "microsoft":
            return _error(400, "unauthorized_client", f"AADSTS700016: Application with identifier "
                          f"'{form.get('client_id')}' was not found in the directory.")
        if app.client_secret is not None:
            return _error(401, "invalid_client", "AADSTS7000218: The request body must contain the "
                          "following parameter: 'client_assertion' or 'client_secret'.")
        scope = form.get("scope", "").split()
        if not set(MAIL_SCOPES["microsoft"]) & set(scope) or not {"openid", "email"} <= set(scope):
            return _error(400, "invalid_scope", f"AADSTS70011: The provided value for the input "
                          f"parameter 'scope' is not valid: {' '.join(scope)}")
        request = DeviceRequest(
            "dc-" + secrets.token_urlsafe(32), "".join(secrets.choice(string.ascii_uppercase) for _ in range(9)),
            app, " ".join(scope), time.monotonic() + self.device_lifetime, self.device_interval)
        self.device_requests.append(request)
        self._idp._remember(request.device_code)
        url = f"{self._idp.url}/devicelogin"
        return _json(200, {"device_code": request.device_code, "user_code": request.user_code,
                           "verification_uri": url, "expires_in": self.device_lifetime,
                           "interval": self.device_interval,
                           "message": f"To sign in, use a web browser to open the page {url} and enter "
                                      f"the code {request.user_code} to authenticate."})

    def _device_login(self, form: dict[str, str]) -> Page:
        request = next((r for r in self.device_requests if r.user_code == form.get("user_code", "").upper()
                        and r.state == "pending" and time.monotonic() < r.expires_at), None)
        if request is None:
            return Page(400, b"That code is not valid or has expired.\n")
        if form.get("decision") == "decline":
            request.state = "declined"
            return Page(200, b"You have declined the sign-in. You can close this window.\n")
        address = form.get("account", "").lower()
        request.account = self.accounts.get(address, Account(address))
        request.state = "approved"
        return Page(200, b"You have signed in on your device. You can close this window.\n")

    # ------------------------------------------------------------------ the grant

    def _poll_device(self, form: dict[str, str]) -> dict[str, Any]:
        request = next((r for r in self.device_requests if r.device_code == form.get("device_code")
                        and r.state != "redeemed"), None)
        if request is None:
            raise OAuthError(400, "bad_verification_code", "AADSTS70019: Verification code expired or "
                             "not valid.", "Bad Request")
        if "client_secret" in form:
            raise OAuthError(401, "invalid_client", "AADSTS700025: Client is public so neither "
                             "'client_assertion' nor 'client_secret' should be presented.", "Unauthorized")
        if form.get("client_id") != request.app.client_id:
            raise OAuthError(400, "invalid_grant", "AADSTS700005: The device code is intended for "
                             "another application.", "Unauthorized")
        now = time.monotonic()
        early = bool(request.polls) and now - request.polls[-1] < request.interval - EARLY_TOLERANCE
        request.polls.append(now)
        if now >= request.expires_at:
            raise OAuthError(400, "expired_token", "AADSTS70020: The provided value for the input "
                             "parameter 'device_code' is not valid. This device code has expired.", "")
        if early or self.forced_slow_downs > 0:
            self.forced_slow_downs = max(0, self.forced_slow_downs - (0 if early else 1))
            request.interval += SLOW_DOWN_STEP
            raise OAuthError(400, "slow_down", "AADSTS70016: Polling too fast: slow down.", "")
        if request.state == "pending":
            raise OAuthError(400, "authorization_pending", "AADSTS70016: OAuth 2.0 device flow error. "
                             "Authorization is pending. Continue polling.", "")
        if request.state == "declined":
            raise OAuthError(400, "authorization_declined", "AADSTS70000: The user declined the "
                             "authorization request.", "")
        assert request.account is not None
        request.state = "redeemed"
        grant = self._grant_for(request.app, request.account)
        return self._issue(grant, request.account, request.scope, "offline_access" in request.scope.split())


def _error(status: int, error: str, description: str) -> Page:
    return _json(status, {"error": error, "error_description": description})


def _json(status: int, payload: dict[str, Any]) -> Page:
    return Page(status, json.dumps(payload).encode(), "application/json; charset=utf-8")
