"""The browser flow: OAuth 2.0 authorization code with PKCE (RFC 7636, S256) and a loopback
redirect (RFC 8252), for Microsoft and Google.

1. Listen on 127.0.0.1 (loopback.py); the redirect URI is http://127.0.0.1:PORT/.
2. Show the authorization URL (the caller prints it alone on one line): response_type=code,
   client_id, redirect_uri, the consent scope (answer.py), a random state, the S256
   code_challenge, login_hint=<username>; Google also access_type=offline and prompt=consent,
   without which it sends no refresh token.
3. Wait for the browser until the deadline. The answer must carry our state (else refused:
   an answer from another attempt or a forged one); error=access_denied means the person
   declined.
4. Redeem the code at token_url with the code_verifier (and client_secret when the tenant has
   one: a confidential "Web" registration; public clients send none).
5. The answer's ID token must name the tenant's mailbox (id_token.py) before its refresh token
   is handed back; the browser's page says how it ended.

The code, the verifier and the client secret reach only the token endpoint: never the
terminal, a log or the browser's page.
"""
from __future__ import annotations

import hmac
import time
from typing import Callable
from urllib.parse import quote, urlencode

from tenant_proc.signin.consent import pkce
from tenant_proc.signin.consent.answer import consent_from, consent_scope
from tenant_proc.signin.consent.endpoint import Refusal, Unavailable, post_form
from tenant_proc.signin.consent.loopback import CLOSE_TEXT, LoopbackListener, Redirect
from tenant_proc.signin.consent.outcome import Consent, ConsentError, shown
from tenant_proc.spec import Secret, TenantSpec


def authorize_in_browser(spec: TenantSpec, port: int, timeout: float,
                         show: Callable[[str], None]) -> Consent:
    """Run the browser flow; `show` gets the authorization URL. Raises ConsentError."""
    verifier = pkce.new_verifier()
    state = pkce.new_state()
    with LoopbackListener(port) as listener:
        show(authorization_url(spec, listener.redirect_uri, state, pkce.challenge(verifier)))
        redirect = listener.wait(time.monotonic() + timeout)
        if redirect is None:
            raise ConsentError(f"no answer from the browser within {timeout:g}s (--timeout): "
                               "nothing stored")
        with redirect:
            consent = _redeem(spec, redirect, state, verifier, listener.redirect_uri)
            redirect.page = f"Signed in as {consent.account} for {spec.name}. {CLOSE_TEXT}"
        return consent


def authorization_url(spec: TenantSpec, redirect_uri: str, state: str, code_challenge: str) -> str:
    oauth = spec.oauth
    assert oauth is not None
    params = {
        "response_type": "code",
        "client_id": oauth.client_id,
        "redirect_uri": redirect_uri,
        "scope": consent_scope(oauth),
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
        "login_hint": spec.username,
    }
    if oauth.provider == "google":
        params.update(access_type="offline", prompt="consent")
    separator = "&" if "?" in oauth.authorize_url else "?"
    return oauth.authorize_url + separator + urlencode(params, quote_via=quote)


def _redeem(spec: TenantSpec, redirect: Redirect, state: str, verifier: Secret,
            redirect_uri: str) -> Consent:
    oauth = spec.oauth
    assert oauth is not None
    params = redirect.params
    if redirect.repeated:
        raise ConsentError("the answer repeats a parameter: refused, nothing stored")
    if not hmac.compare_digest(params.get("state", "").encode(), state.encode()):
        raise ConsentError("the answer's state does not match this sign-in (an answer to another "
                           "attempt, or a forged one): refused, nothing stored")
    error = params.get("error")
    description = params.get("error_description", "").strip()
    detail = f": {shown(description)}" if description else ""
    if error == "access_denied":
        raise ConsentError(f"the sign-in was declined (access_denied{detail}): nothing stored")
    if error is not None:
        raise ConsentError(f"the identity provider answered {shown(error, 60)}{detail}: nothing stored")
    code = params.get("code", "")
    if not code:
        raise ConsentError("the answer carries no code: nothing stored")
    secret = oauth.client_secret.reveal() if oauth.client_secret else None
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier.reveal(), "client_id": oauth.client_id}
    if secret:
        form["client_secret"] = secret
    try:
        answer = post_form(oauth, oauth.token_url, form, secrets=[code, verifier, secret])
    except Refusal as exc:
        raise ConsentError(f"the token endpoint refused the code: {exc.describe()}: nothing "
                           "stored") from None
    except Unavailable as exc:
        raise ConsentError(f"{exc}: the code was not redeemed, nothing stored; run authorize "
                           "again") from None
    return consent_from(spec, answer)
