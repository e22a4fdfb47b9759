"""The consent side of the identity-provider stand-in (tests/servers/oauth/idp_consent.py,
idp_device.py) over real HTTP: the authorize endpoint's checks, the authorization-code grant
refusing what Entra ID and Google refuse (a wrong verifier, a reused code, a wrong redirect URI,
a public client's secret), its tokens and ID token, and the device flow's answers. The
`authorize` tests trust these, so they are checked here first."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from tests.servers.oauth.idp import IdentityProvider
from tests.servers.oauth.idp_grants import GOOGLE_SCOPE, MICROSOFT_SCOPE

pytestmark = pytest.mark.integration

MAILBOX = "support@contoso.example"
REDIRECT = "http://127.0.0.1:53682/"
MS_SCOPE = f"{MICROSOFT_SCOPE} offline_access openid profile email"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(idp: IdentityProvider, url: str | None = None, **overrides: str) -> httpx.Response:
    params = {"response_type": "code", "client_id": "desk-app", "redirect_uri": REDIRECT,
              "scope": MS_SCOPE, "state": "st-1", "code_challenge": pkce()[1],
              "code_challenge_method": "S256", "login_hint": MAILBOX, **overrides}
    params = {k: v for k, v in params.items() if v != "-"}
    return httpx.get((url or idp.consent.microsoft_authorize_url()) + "?" + urlencode(params), timeout=10)


def answer_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    return dict(parse_qsl(location.query))


def redeem(idp: IdentityProvider, code: str, verifier: str, url: str | None = None,
           **extra: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier, "client_id": "desk-app", **extra}
    return httpx.post(url or idp.microsoft_token_url(), data=form, timeout=10)


def consented(idp: IdentityProvider, url: str | None = None, **overrides: str) -> tuple[str, str]:
    verifier, challenge = pkce()
    return answer_of(authorize(idp, url, code_challenge=challenge, **overrides))["code"], verifier


def claims(id_token: str) -> dict[str, object]:
    payload = id_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_a_consent_gives_tokens_the_refresh_grant_and_introspection_accept(idp: IdentityProvider) -> None:
    idp.consent.add_app("desk-app")
    idp.consent.add_account(MAILBOX, upn="s.upport@contoso.onmicrosoft.com")
    code, verifier = consented(idp)
    answer = redeem(idp, code, verifier)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert claims(body["id_token"]).items() >= {"aud": "desk-app", "preferred_username": MAILBOX,
                                                "email": MAILBOX,
                                                "upn": "s.upport@contoso.onmicrosoft.com"}.items()
    introspected = httpx.post(idp.introspection_url, data={"token": body["access_token"]}).json()
    assert introspected["username"] == MAILBOX
    refreshed = httpx.post(idp.microsoft_token_url(), data={
        "grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": "desk-app"})
    assert refreshed.status_code == 200 and refreshed.json()["refresh_token"] != body["refresh_token"]
    # A public client's refresh token with any secret at all, an empty one too: AADSTS700025.
    again = httpx.post(idp.microsoft_token_url(), data={
        "grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"],
        "client_id": "desk-app", "client_secret": ""})
    assert again.status_code == 401 and "AADSTS700025" in again.json()["error_description"]
    assert idp.consent.authorize_requests[0]["login_hint"] == MAILBOX


def test_the_code_grant_refuses_what_the_providers_refuse(idp: IdentityProvider) -> None:
    idp.consent.add_app("desk-app")
    code, verifier = consented(idp)
    wrong_verifier = redeem(idp, code, pkce()[0])
    assert (wrong_verifier.status_code, wrong_verifier.json()["error"]) == (400, "invalid_grant")
    assert wrong_verifier.json()["error_description"].startswith("AADSTS50148")
    wrong_redirect = redeem(idp, code, verifier, redirect_uri="http://127.0.0.1:1/")
    assert wrong_redirect.json()["error"] == "invalid_grant" and "AADSTS50011" in wrong_redirect.text
    with_secret = redeem(idp, code, verifier, client_secret="s")
    assert (with_secret.status_code, with_secret.json()["error"]) == (401, "invalid_client")
    good = redeem(idp, code, verifier)
    assert good.status_code == 200
    reused = redeem(idp, code, verifier)
    assert reused.json()["error"] == "invalid_grant" and reused.json()["error_description"].startswith("AADSTS54005")
    # A replayed code revokes what it gave (RFC 6749 4.1.2).
    assert not idp.refresh_token_valid(good.json()["refresh_token"])
    assert redeem(idp, "code-never-issued", verifier).json()["error_description"].startswith("AADSTS70000")
    idp.consent.code_lifetime = 0
    late, late_verifier = consented(idp)
    assert "AADSTS70008" in redeem(idp, late, late_verifier).text


def test_the_authorize_endpoint_checks_every_parameter(idp: IdentityProvider) -> None:
    idp.consent.add_app("desk-app")
    unknown = authorize(idp, client_id="nobody")
    assert unknown.status_code == 400 and "AADSTS700016" in unknown.text  # no redirect
    elsewhere = authorize(idp, redirect_uri="http://evil.example/")
    assert elsewhere.status_code == 400 and "AADSTS50011" in elsewhere.text
    assert authorize(idp, redirect_uri="http://localhost:53682/").status_code == 400
    cases = {"response_type": ("token", "unsupported_response_type"), "state": ("-", "invalid_request"),
             "code_challenge_method": ("plain", "invalid_request"),
             "code_challenge": ("short", "invalid_request"), "login_hint": ("-", "invalid_request"),
             "scope": (f"{MICROSOFT_SCOPE} offline_access", "invalid_scope")}
    for name, (value, error) in cases.items():
        assert answer_of(authorize(idp, **{name: value}))["error"] == error, name
    assert idp.consent.authorize_requests == []
    idp.consent.decline = True
    assert answer_of(authorize(idp)) == {"error": "access_denied", "state": "st-1",
                                         "error_description": "The user declined to consent."}


def test_google_needs_offline_access_and_prompt_consent_for_a_refresh_token(idp: IdentityProvider) -> None:
    idp.consent.add_app("desk-app", client_secret="g-secret", provider="google")
    scope = f"{GOOGLE_SCOPE} openid email"
    for extra, refresh in (({}, False), ({"access_type": "offline", "prompt": "consent"}, True)):
        code, verifier = consented(idp, idp.consent.google_authorize_url, scope=scope, **extra)
        assert redeem(idp, code, verifier, idp.google_token_url).json()["error"] == "invalid_client"
        answer = redeem(idp, code, verifier, idp.google_token_url, client_secret="g-secret").json()
        assert ("refresh_token" in answer) is refresh
        assert claims(answer["id_token"]).items() >= {"email": MAILBOX, "email_verified": True,
                                                      "aud": "desk-app"}.items()
        assert "preferred_username" not in claims(answer["id_token"])
    code, verifier = consented(idp, idp.consent.google_authorize_url, scope=scope)
    mismatch = redeem(idp, code, verifier, idp.google_token_url, client_secret="g-secret",
                      redirect_uri="http://127.0.0.1:2/")
    assert mismatch.json() == {"error": "redirect_uri_mismatch", "error_description": "Bad Request"}


def poll(idp: IdentityProvider, device_code: str) -> httpx.Response:
    return httpx.post(idp.microsoft_token_url(), data={
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": device_code,
        "client_id": "desk-app"}, timeout=10)


def start_device(idp: IdentityProvider) -> dict[str, object]:
    answer = httpx.post(idp.consent.microsoft_device_url(), data={"client_id": "desk-app", "scope": MS_SCOPE})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_device_flow_answers_pending_slow_down_declined_and_expired(idp: IdentityProvider) -> None:
    idp.consent.add_app("desk-app")
    idp.consent.add_app("web-app", client_secret="s")
    assert httpx.post(idp.consent.microsoft_device_url(), data={"client_id": "web-app", "scope": MS_SCOPE}
                      ).json()["error"] == "invalid_client"  # no "Allow public client flows"
    idp.consent.device_interval = 1
    start = start_device(idp)
    assert start["interval"] == 1 and start["expires_in"] == 900 and str(start["verification_uri"]).endswith("/devicelogin")
    code = str(start["device_code"])
    assert poll(idp, code).json()["error"] == "authorization_pending"
    too_soon = poll(idp, code)
    assert too_soon.json()["error"] == "slow_down"  # and the interval is 6 s from now on
    time.sleep(1.1)
    assert poll(idp, code).json()["error"] == "slow_down", "1.1 s is still sooner than 6 s"
    idp.consent.device_requests[-1].interval = 1  # the test will not wait 11 s
    time.sleep(1.1)
    assert poll(idp, code).json()["error"] == "authorization_pending"
    page = httpx.post(f"{idp.url}/devicelogin", data={"user_code": start["user_code"], "account": MAILBOX,
                                                      "decision": "approve"})
    assert page.status_code == 200
    time.sleep(1.1)
    tokens = poll(idp, code).json()
    assert claims(tokens["id_token"])["preferred_username"] == MAILBOX and tokens["refresh_token"]
    assert poll(idp, code).json()["error"] == "bad_verification_code"  # redeemed: gone

    declined = start_device(idp)
    httpx.post(f"{idp.url}/devicelogin", data={"user_code": declined["user_code"], "decision": "decline"})
    assert poll(idp, str(declined["device_code"])).json()["error"] == "authorization_declined"
    idp.consent.device_lifetime = 0
    expired = start_device(idp)
    assert poll(idp, str(expired["device_code"])).json()["error"] == "expired_token"
