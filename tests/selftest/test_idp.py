"""The identity-provider stand-in (tests/servers/oauth/idp.py) over real HTTP, and a raw XOAUTH2/OAUTHBEARER
login to the real Dovecot with a token it issued. The OAuth tests trust this stand-in, so its
own behaviour (grants, rotation, revocation, errors, down/up) is checked here first."""
from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import imapclient
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.harness.supervisor_run import REPO_ROOT
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message
from tests.servers.oauth.idp import IdentityProvider
from tests.servers.oauth.idp_grants import GOOGLE_SCOPE, JWT_BEARER, MICROSOFT_SCOPE
from tests.servers.oauth.idp_keys import (
    KeyPair,
    generate_rsa_key,
    write_service_account_file,
    write_token_command_credentials,
)

pytestmark = pytest.mark.integration

MAILBOX = "support@contoso.example"
SA_EMAIL = "mail-reader@idle-test.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return generate_rsa_key()


def post(url: str, verify: ssl.SSLContext | bool = True, **form: str) -> httpx.Response:
    return httpx.post(url, data=form, timeout=10, verify=verify)


def client_credentials(idp: IdentityProvider, secret: str = "app-secret", scope: str = MICROSOFT_SCOPE) -> httpx.Response:
    return post(idp.microsoft_token_url(), grant_type="client_credentials", client_id="app-1",
                client_secret=secret, scope=scope)


def assertion(key: KeyPair, aud: str, sub: str = MAILBOX, iss: str = SA_EMAIL, lifetime: int = 3600,
              scope: str = GOOGLE_SCOPE, iat_offset: int = 0) -> str:
    now = int(time.time()) + iat_offset
    claims = {"iss": iss, "scope": scope, "aud": aud, "sub": sub, "iat": now, "exp": now + lifetime}
    return jwt.encode({"alg": "RS256", "typ": "JWT"}, claims, RSAKey.import_key(key.private_pem))


def introspect(idp: IdentityProvider, token: str) -> dict[str, object]:
    return post(idp.introspection_url, token=token).json()


# ---------------------------------------------------------------------- client credentials

def test_client_credentials_token_is_active_at_introspection_for_the_apps_mailbox(idp: IdentityProvider) -> None:
    idp.add_app("app-1", "app-secret", mailbox="Support@Contoso.example")
    answer = client_credentials(idp)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 60 and "refresh_token" not in body
    assert introspect(idp, body["access_token"]) == {"active": True, "username": MAILBOX,
                                                       "exp": pytest.approx(time.time() + 60, abs=5)}
    assert introspect(idp, "at-never-issued") == {"active": False}
    assert idp.by_grant_type["client_credentials"] == 1 and idp.token_requests("app-1") == 1


def test_client_credentials_errors_are_shaped_as_entra_id_sends_them(idp: IdentityProvider) -> None:
    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    wrong_secret = client_credentials(idp, secret="not-it")
    assert wrong_secret.status_code == 401
    assert wrong_secret.json()["error"] == "invalid_client"
    assert wrong_secret.json()["error_description"].startswith("AADSTS7000215:")
    wrong_scope = client_credentials(idp, scope="https://graph.microsoft.com/.default")
    assert (wrong_scope.status_code, wrong_scope.json()["error"]) == (400, "invalid_scope")
    unknown = post(idp.microsoft_token_url(), grant_type="client_credentials", client_id="nobody",
                   client_secret="x", scope=MICROSOFT_SCOPE)
    assert (unknown.status_code, unknown.json()["error"]) == (400, "unauthorized_client")
    not_a_form = httpx.post(idp.microsoft_token_url(), json={"grant_type": "client_credentials"}, timeout=10)
    assert not_a_form.status_code == 400
    assert idp.token_requests("app-1") == 2 and idp.token_requests("nobody") == 1


def test_client_secret_basic_authentication_is_accepted(idp: IdentityProvider) -> None:
    idp.add_app("app-1", "se:cr/et", mailbox=MAILBOX)
    answer = httpx.post(idp.microsoft_token_url(), timeout=10, auth=("app-1", "se%3Acr%2Fet"),
                        data={"grant_type": "client_credentials", "scope": MICROSOFT_SCOPE})
    assert answer.status_code == 200, answer.text


def test_revoked_app_gets_unauthorized_client_and_its_tokens_go_inactive(idp: IdentityProvider) -> None:
    app = idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    token = client_credentials(idp).json()["access_token"]
    idp.revoke(app)
    assert introspect(idp, token) == {"active": False}
    answer = client_credentials(idp)
    assert answer.status_code == 400
    assert answer.json()["error"] == "unauthorized_client"
    assert answer.json()["error_description"].startswith("AADSTS")


# ---------------------------------------------------------------------- refresh tokens

def refresh(idp: IdentityProvider, token: str, url: str | None = None, client_id: str = "native-app",
            **extra: str) -> httpx.Response:
    return post(url or idp.microsoft_token_url(), grant_type="refresh_token", client_id=client_id,
                refresh_token=token, **extra)


def test_refresh_token_rotates_on_every_use_and_the_old_one_dies(idp: IdentityProvider) -> None:
    grant = idp.add_refresh_grant("native-app", MAILBOX)
    first = grant.refresh_token
    assert first is not None
    answer = refresh(idp, first, scope="https://outlook.office.com/IMAP.AccessAsUser.All offline_access")
    assert answer.status_code == 200, answer.text
    second = answer.json()["refresh_token"]
    assert second != first and grant.refresh_token == second
    assert introspect(idp, answer.json()["access_token"])["username"] == MAILBOX
    reused = refresh(idp, first)
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    assert reused.json()["error_description"].startswith("AADSTS70000:")
    third = refresh(idp, second).json()["refresh_token"]
    assert grant.refresh_history == [first, second, third]
    assert idp.by_grant_type["refresh_token"] == 3


def test_google_refresh_grant_needs_the_client_secret_and_may_keep_its_token(idp: IdentityProvider) -> None:
    grant = idp.add_refresh_grant("web-client.apps.googleusercontent.com", MAILBOX,
                                  client_secret="g-secret", rotate=False)
    token = grant.refresh_token
    assert token is not None
    kwargs = {"url": idp.google_token_url, "client_id": "web-client.apps.googleusercontent.com"}
    no_secret = refresh(idp, token, **kwargs)
    assert (no_secret.status_code, no_secret.json()["error"]) == (401, "invalid_client")
    for _ in range(2):
        answer = refresh(idp, token, client_secret="g-secret", **kwargs)
        assert answer.status_code == 200 and "refresh_token" not in answer.json()
    idp.revoke(grant)
    revoked = refresh(idp, token, client_secret="g-secret", **kwargs)
    assert revoked.status_code == 400
    assert revoked.json() == {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}


# ---------------------------------------------------------------------- JWT bearer

def test_service_account_assertion_is_verified_and_sub_is_the_mailbox(idp: IdentityProvider, key: KeyPair) -> None:
    idp.add_service_account(SA_EMAIL, key.public_pem, subjects=[MAILBOX, "info@contoso.example"])
    answer = post(idp.google_token_url, grant_type=JWT_BEARER,
                  assertion=assertion(key, aud=idp.google_token_url, sub="info@contoso.example"))
    assert answer.status_code == 200, answer.text
    assert introspect(idp, answer.json()["access_token"])["username"] == "info@contoso.example"
    assert idp.token_requests(SA_EMAIL) == 1


@pytest.mark.parametrize("change, error, status", [
    ({"sub": "ceo@contoso.example"}, "unauthorized_client", 401),   # no delegation for that mailbox
    ({"scope": "https://www.googleapis.com/auth/gmail.readonly"}, "unauthorized_client", 401),
    ({"aud": "https://oauth2.googleapis.com/token"}, "invalid_grant", 400),
    ({"lifetime": 7200}, "invalid_grant", 400),                     # longer than one hour
    ({"iat_offset": -7200}, "invalid_grant", 400),                  # expired an hour ago
    ({"iss": "someone-else@x.iam.gserviceaccount.com"}, "invalid_grant", 400),
])
def test_service_account_assertion_with_a_bad_claim_is_refused(
        idp: IdentityProvider, key: KeyPair, change: dict[str, object], error: str, status: int) -> None:
    idp.add_service_account(SA_EMAIL, key.public_pem, subjects=[MAILBOX])
    claims: dict[str, object] = {"aud": idp.google_token_url, **change}
    answer = post(idp.google_token_url, grant_type=JWT_BEARER, assertion=assertion(key, **claims))  # type: ignore[arg-type]
    assert (answer.status_code, answer.json()["error"]) == (status, error), answer.text


def test_assertion_signed_with_another_key_fails_the_signature_check(idp: IdentityProvider, key: KeyPair) -> None:
    idp.add_service_account(SA_EMAIL, key.public_pem, subjects=[MAILBOX])
    forged = assertion(generate_rsa_key(), aud=idp.google_token_url)
    answer = post(idp.google_token_url, grant_type=JWT_BEARER, assertion=forged)
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}


def test_service_account_file_has_googles_fields(tmp_path: Path, key: KeyPair) -> None:
    path = write_service_account_file(tmp_path / "sa.json", SA_EMAIL, "https://127.0.0.1:1/token", key)
    document = json.loads(path.read_text())
    assert document["type"] == "service_account" and document["client_email"] == SA_EMAIL
    assert document["token_uri"] == "https://127.0.0.1:1/token"
    assert document["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert path.stat().st_mode & 0o077 == 0


# ---------------------------------------------------------------------- steering

def test_lifetime_is_honoured_at_introspection(idp: IdentityProvider) -> None:
    idp.token_lifetime = 1
    token = idp.issue_access_token(MAILBOX)
    assert introspect(idp, token)["active"] is True
    time.sleep(1.5)
    assert introspect(idp, token) == {"active": False}


def test_throttling_answers_429_with_retry_after_n_times(idp: IdentityProvider) -> None:
    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    idp.answer_errors(2, status=429, retry_after=3)
    for _ in range(2):
        answer = client_credentials(idp)
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "3"
    idp.answer_errors(1, status=503)
    assert client_credentials(idp).status_code == 503
    assert client_credentials(idp).status_code == 200
    assert idp.token_requests("app-1") == 4


def test_down_refuses_connections_and_up_listens_on_the_same_port(idp: IdentityProvider) -> None:
    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    port = idp.port
    with httpx.Client(timeout=5) as keep_alive:
        form = {"grant_type": "client_credentials", "client_id": "app-1", "client_secret": "app-secret",
                "scope": MICROSOFT_SCOPE}
        assert keep_alive.post(idp.microsoft_token_url(), data=form).status_code == 200
        idp.down()
        assert not idp.running
        with pytest.raises(httpx.TransportError):
            keep_alive.post(idp.microsoft_token_url(), data=form)   # the open connection is cut too
        with pytest.raises(httpx.ConnectError):
            client_credentials(idp)
        idp.up()
        assert idp.port == port
        assert keep_alive.post(idp.microsoft_token_url(), data=form).status_code == 200
    assert idp.token_requests("app-1") == 2


def test_tls_token_endpoint_is_trusted_with_the_test_ca_only(certs: object) -> None:
    with IdentityProvider(tls=True) as idp:
        idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
        assert idp.microsoft_token_url().startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=idp.ca_file)
        answer = post(idp.microsoft_token_url(), verify=trusted, grant_type="client_credentials",
                      client_id="app-1", client_secret="app-secret", scope=MICROSOFT_SCOPE)
        assert answer.status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            post(idp.microsoft_token_url(), verify=ssl.create_default_context(), grant_type="x")


def test_print_token_program_prints_only_a_token(idp: IdentityProvider, tmp_path: Path) -> None:
    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    creds = write_token_command_credentials(tmp_path / "creds.json", idp.microsoft_token_url(), "app-1",
                                            "app-secret", MICROSOFT_SCOPE)
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "servers" / "oauth" / "idp_keys.py"), "print-token", str(creds)],
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert introspect(idp, token)["username"] == MAILBOX and token in idp.issued_secrets()


# ---------------------------------------------------------------------- against the real Dovecot

def imap(dovecot: Dovecot, host: str = "127.0.0.1") -> imapclient.IMAPClient:
    return imapclient.IMAPClient(host, dovecot.imaps_port, timeout=15,
                                 ssl_context=ssl.create_default_context(cafile=dovecot.ca_file))


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_dovecot_accepts_a_token_from_the_stand_in(idp: IdentityProvider, oauth_dovecot: Dovecot, mechanism: str) -> None:
    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    oauth_dovecot.deliver(MAILBOX, make_message("for the oauth mailbox"))
    token = client_credentials(idp).json()["access_token"]
    with imap(oauth_dovecot) as client:
        assert f"AUTH={mechanism.upper()}".encode() in client.capabilities()
        login = client.oauth2_login if mechanism == "xoauth2" else client.oauthbearer_login
        login(MAILBOX, token)
        assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 1
    assert idp.introspections == 1
    assert f"method={mechanism.upper()}" in oauth_dovecot.log_path.read_text()


def test_dovecot_refuses_expired_and_foreign_tokens_and_passwords_still_work(
        idp: IdentityProvider, oauth_dovecot: Dovecot) -> None:
    expired = idp.issue_access_token(MAILBOX, lifetime=0)
    someone_elses = idp.issue_access_token("info@contoso.example")
    # Failing logins dial their own address (DESIGN-NOTES 2: the auth penalty).
    for token in (expired, someone_elses):
        with imap(oauth_dovecot, host="127.0.0.3") as client:
            with pytest.raises(imapclient.exceptions.LoginError, match="AUTHENTICATIONFAILED"):
                client.oauth2_login(MAILBOX, token)
    with imap(oauth_dovecot) as client:
        client.login("alice", "alice-pw")
    assert "Password mismatch" not in oauth_dovecot.log_path.read_text()  # tokens never go to passwd-file
