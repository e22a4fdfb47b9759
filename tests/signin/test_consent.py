"""The pieces of the consent flows (tenant_proc/signin/consent/) on their own: PKCE, the ID
token's account check, the scope and authorization URL, the loopback listener against odd
visitors, the endpoint client against a hostile endpoint; and the tenant side of a
refresh_token tenant that has no token yet. The flows end to end: tests/cli/test_authorize.py
and tests/signin/test_authorize_e2e.py."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from supervisor.errors import ConfigError
from tenant_proc.errors import FatalError
from tenant_proc.signin.consent import loopback, pkce
from tenant_proc.signin.consent.answer import consent_from, consent_scope
from tenant_proc.signin.consent.browser import authorization_url
from tenant_proc.signin.consent.endpoint import Unavailable, post_form
from tenant_proc.signin.consent.id_token import accounts_named, check_account
from tenant_proc.signin.consent.loopback import LoopbackListener
from tenant_proc.signin.consent.outcome import ConsentError
from tenant_proc.signin.tokens import TokenSource
from tenant_proc.spec import Secret
from tests.signin.test_signin import MAILBOX, FakeFetch, oauth_spec, tenant

MS = {"provider": "microsoft", "flow": "refresh_token", "tenant": "contoso.onmicrosoft.com",
      "client_id": "desk-app", "token_url": "http://127.0.0.1:9/token"}
GOOGLE = {"provider": "google", "flow": "refresh_token", "client_id": "g-app", "client_secret": "gs",
          "token_url": "http://127.0.0.1:9/token"}


def id_token(**claims: Any) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256'})}.{part({'aud': 'desk-app', **claims})}.c2ln"


# ---------------------------------------------------------------------- PKCE, scope, URL

def test_pkce_challenge_is_rfc_7636s_s256() -> None:
    # RFC 7636 Appendix B.
    verifier = Secret("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
    assert pkce.challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    fresh = pkce.new_verifier().reveal()
    assert 43 <= len(fresh) <= 128 and pkce.new_verifier().reveal() != fresh
    assert pkce.new_state() != pkce.new_state()


def test_consent_scope_adds_what_the_consent_needs_once() -> None:
    assert consent_scope(oauth_spec(MS)) == ("https://outlook.office365.com/.default offline_access "
                                             "openid profile email")
    assert consent_scope(oauth_spec(GOOGLE)) == "https://mail.google.com/ openid email"


def test_authorization_url_carries_every_parameter(tmp_path: Path) -> None:
    spec = tenant(oauth_spec({**GOOGLE, "authorize_url": "https://idp.example/auth?hd=contoso.example"}),
                  tmp_path)
    url = authorization_url(spec, "http://127.0.0.1:4711/", "the-state", "the-challenge")
    assert url.startswith("https://idp.example/auth?hd=contoso.example&")
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert params == {"hd": "contoso.example", "response_type": "code", "client_id": "g-app",
                      "redirect_uri": "http://127.0.0.1:4711/",
                      "scope": "https://mail.google.com/ openid email", "state": "the-state",
                      "code_challenge": "the-challenge", "code_challenge_method": "S256",
                      "login_hint": MAILBOX, "access_type": "offline", "prompt": "consent"}
    assert "gs" not in url  # the client secret goes to the token endpoint only


def test_authorize_and_device_urls_default_per_provider_and_follow_the_token_url_rule() -> None:
    microsoft = oauth_spec(MS)
    assert microsoft.authorize_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    assert microsoft.device_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
    google = oauth_spec(GOOGLE)
    assert (google.authorize_url, google.device_url) == ("https://accounts.google.com/o/oauth2/v2/auth", "")
    assert oauth_spec({**MS, "authorize_url": "http://[::1]:8080/authorize"}).authorize_url == \
        "http://[::1]:8080/authorize"
    for key in ("authorize_url", "device_url"):
        with pytest.raises(ConfigError, match=f"oauth.{key} must use https"):
            oauth_spec({**MS, key: "http://idp.example/x"})
        with pytest.raises(ConfigError, match=f"oauth.{key} 'ftp://idp.example/x' is not an http"):
            oauth_spec({**MS, key: "ftp://idp.example/x"})
    with pytest.raises(ConfigError, match="device_url is for microsoft only"):
        oauth_spec({**GOOGLE, "device_url": "https://oauth2.googleapis.com/device/code"})
    assert oauth_spec(MS).refresh_token is None  # no token yet: `authorize` will store one


# ---------------------------------------------------------------------- the account check

def test_the_account_is_any_claim_case_insensitively_and_mismatches_name_both(tmp_path: Path) -> None:
    spec = tenant(oauth_spec(MS), tmp_path, username="Support@Contoso.example")
    assert check_account(spec, id_token(preferred_username="x@contoso.onmicrosoft.com",
                                        upn="SUPPORT@contoso.example")) == "SUPPORT@contoso.example"
    with pytest.raises(ConsentError) as wrong:
        check_account(spec, id_token(preferred_username="me@outlook.example", email="me@outlook.example"))
    assert str(wrong.value) == ("signed in as me@outlook.example, but tenant contoso's mailbox is "
                                "Support@Contoso.example: nothing stored; sign in again as "
                                "Support@Contoso.example")
    with pytest.raises(ConsentError, match="another app"):
        check_account(spec, id_token(aud="other-app", preferred_username=MAILBOX))
    with pytest.raises(ConsentError, match="names no account"):
        check_account(spec, id_token(sub="abc"))
    for garbage in ("not-a-jwt", "a.!!!.c", "a." + "x" * 20000 + ".c"):
        with pytest.raises(ConsentError, match="nothing stored"):
            check_account(spec, garbage)


def test_an_unverified_email_proves_nothing_and_upn_counts_for_microsoft_only(tmp_path: Path) -> None:
    claims = {"email": MAILBOX, "email_verified": False, "upn": MAILBOX}
    assert accounts_named(claims, "google") == []
    assert accounts_named(claims, "microsoft") == [MAILBOX]
    spec = tenant(oauth_spec({**GOOGLE, "client_id": "desk-app"}), tmp_path)
    with pytest.raises(ConsentError) as escaped:  # a terminal never gets the provider's escapes
        check_account(spec, id_token(email="a\x1b[31m@x\nforged line"))
    assert "signed in as a?[31m@x?forged line, but" in str(escaped.value)


def test_no_refresh_token_or_no_id_token_stores_nothing(tmp_path: Path) -> None:
    spec = tenant(oauth_spec(MS), tmp_path)
    with pytest.raises(ConsentError, match=r"no refresh token \(the scope must include offline_access\)"):
        consent_from(spec, {"id_token": id_token(preferred_username=MAILBOX), "access_token": "at"})
    with pytest.raises(ConsentError, match="no ID token"):
        consent_from(spec, {"refresh_token": "rt", "access_token": "at"})
    consent = consent_from(spec, {"id_token": id_token(preferred_username=MAILBOX), "refresh_token": "rt"})
    assert consent.account == MAILBOX and consent.refresh_token == Secret("rt")


# ---------------------------------------------------------------------- the loopback listener

def test_the_listener_answers_strangers_and_waits_for_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loopback, "CLIENT_TIMEOUT", 0.5)
    with LoopbackListener(0) as listener:
        base = listener.redirect_uri
        results: dict[str, Any] = {}

        def visitors() -> None:
            silent = socket.create_connection(("127.0.0.1", listener.port))  # says nothing
            results["favicon"] = httpx.get(base + "favicon.ico").status_code
            results["bare"] = httpx.get(base).status_code
            results["post"] = httpx.post(base + "?code=x&state=y").status_code
            results["page"] = httpx.get(base + "?code=c&state=s&state=t").text
            silent.close()

        thread = threading.Thread(target=visitors)
        thread.start()
        redirect = listener.wait(time.monotonic() + 10)
        assert redirect is not None and redirect.repeated  # two states: not to be trusted
        with pytest.raises(ConsentError):
            with redirect:
                raise ConsentError("refused")
        thread.join(10)
    assert results["favicon"] == 404 and results["bare"] == 404 and results["post"] == 400
    assert results["page"] == "Sign-in not completed: refused. You can close this window.\n"


def test_a_port_in_use_is_one_line_and_the_deadline_ends_the_wait() -> None:
    with LoopbackListener(0) as taken:
        with pytest.raises(ConsentError, match=rf"port {taken.port} on 127.0.0.1 is in use: choose another --port"):
            LoopbackListener(taken.port)
        started = time.monotonic()
        assert taken.wait(started + 0.3) is None
        assert time.monotonic() - started < 2


# ---------------------------------------------------------------------- the endpoint client

class _Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        mode = self.path.strip("/")
        body = {"huge": b"{" + b" " * 200_000 + b"}", "text": b"<html>hello</html>",
                "redirect": b"", "trickle": b"{}" + b" " * 100}[mode]
        self.send_response(302 if mode == "redirect" else 200)
        if mode == "redirect":
            self.send_header("Location", "https://elsewhere.example/token")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "trickle":
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
            return
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_endpoint_client_bounds_size_time_and_follows_no_redirect(hostile: str) -> None:
    oauth = oauth_spec({**MS, "token_timeout": 1})
    with pytest.raises(ConsentError, match="more than 64 KiB"):
        post_form(oauth, f"{hostile}/huge", {})
    with pytest.raises(ConsentError, match="without a JSON object"):
        post_form(oauth, f"{hostile}/text", {})
    with pytest.raises(ConsentError, match="HTTP 302 without an OAuth error"):
        post_form(oauth, f"{hostile}/redirect", {"code": "the-code"})
    started = time.monotonic()
    with pytest.raises(Unavailable, match="did not answer within 1s"):
        post_form(oauth, f"{hostile}/trickle", {})  # 10 s of trickling, each byte on time
    assert time.monotonic() - started < 3


# ---------------------------------------------------------------------- the tenant without a token

def test_a_refresh_token_tenant_without_a_token_fails_saying_to_authorize(tmp_path: Path) -> None:
    fetch = FakeFetch()
    source = TokenSource(tenant(oauth_spec(MS), tmp_path), fetch=fetch)
    with pytest.raises(FatalError) as failed:
        source.for_login()
    assert failed.value.kind == "auth"
    assert str(failed.value) == ("tenant contoso: microsoft sign-in failed: no refresh token yet: run "
                                 "`idle-supervisor authorize contoso` (or set refresh_token_env), then reload")
    assert fetch.calls == [] and source.requests == 0  # nothing asked of the identity provider
