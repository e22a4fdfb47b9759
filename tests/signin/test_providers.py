"""Token requests to the providers (tenant_proc/signin/providers): each grant against the
identity-provider stand-in (tests/servers/oauth/idp.py), a token endpoint that throttles, is down
or needs its own CA, the token command, and Microsoft's certificate credential against an
endpoint of the test's own.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.signin.providers import provider_for
from tenant_proc.signin.storage import SqliteTokenStore
from tenant_proc.signin.tokens import TokenSource
from tests.servers.oauth.idp import IdentityProvider
from tests.servers.oauth.idp_keys import generate_rsa_key, write_service_account_file
from tests.signin.test_signin import MAILBOX, oauth_spec, tenant

# ---------------------------------------------------------------- grants against tests/servers/oauth/idp.py

def test_microsoft_client_credentials_and_a_wrong_secret(idp: IdentityProvider, tmp_path: Path) -> None:
    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    table = {"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "app-1",
             "client_secret": "app-secret", "token_url": idp.microsoft_token_url()}
    answer = provider_for(tenant(oauth_spec(table), tmp_path))(None)
    assert answer.access_token.reveal().startswith("at-") and 50 <= answer.lifetime <= 60
    with pytest.raises(FatalError) as refused:
        provider_for(tenant(oauth_spec({**table, "client_secret": "wrong-secret"}), tmp_path))(None)
    line = str(refused.value)
    assert refused.value.kind == "auth" and "invalid_client (AADSTS7000215)" in line
    assert "tenant contoso: microsoft" in line and "wrong-secret" not in line


def test_refresh_token_rotation_through_the_stand_in(idp: IdentityProvider, tmp_path: Path) -> None:
    grant = idp.add_refresh_grant("native-app", mailbox=MAILBOX, client_secret="cs")
    seed = grant.refresh_token
    table = {"provider": "microsoft", "flow": "refresh_token", "tenant": "contoso.onmicrosoft.com",
             "client_id": "native-app", "client_secret": "cs", "refresh_token": seed,
             "token_url": idp.microsoft_token_url()}
    spec = tenant(oauth_spec(table), tmp_path)
    TokenSource(spec).for_login()
    stored = SqliteTokenStore(tmp_path / "state" / "checkpoints.sqlite3").load("contoso")
    assert stored is not None and stored.refresh_token.reveal() == grant.refresh_token != seed
    TokenSource(spec).for_login()  # "after a restart": the stored token works, the seed is dead
    assert idp.token_requests("native-app") == 2
    idp.revoke(grant)
    with pytest.raises(FatalError, match=r"invalid_grant \(AADSTS50173\).*consent again"):
        TokenSource(spec).for_login()


def test_a_public_clients_refresh_presents_no_secret_at_all(idp: IdentityProvider, tmp_path: Path) -> None:
    """A "Mobile and desktop" registration (or the device flow, `idle-supervisor authorize
    --device`): Entra ID refuses even an empty client_secret (AADSTS700025), as the stand-in does."""
    grant = idp.add_refresh_grant("desktop-app", mailbox=MAILBOX)
    table = {"provider": "microsoft", "flow": "refresh_token", "tenant": "contoso.onmicrosoft.com",
             "client_id": "desktop-app", "refresh_token": grant.refresh_token,
             "token_url": idp.microsoft_token_url()}
    assert TokenSource(tenant(oauth_spec(table), tmp_path)).for_login().value.reveal().startswith("at-")
    with pytest.raises(FatalError, match=r"invalid_client \(AADSTS700025\): the app is a public client"):
        TokenSource(tenant(oauth_spec({**table, "client_secret": "not-for-a-public-client",
                                       "refresh_token": grant.refresh_token}), tmp_path / "b")).for_login()


def test_a_refresh_token_rotated_by_another_process_is_picked_up_from_the_store(
        idp: IdentityProvider, tmp_path: Path) -> None:
    """`check` (or a restarted instance) rotated the token the running tenant still holds: the
    stand-in refuses used refresh tokens, and the tenant recovers with the stored one."""
    idp.token_lifetime = 5  # every login asks for a token
    grant = idp.add_refresh_grant("native-app", mailbox=MAILBOX, client_secret="cs")
    table = {"provider": "microsoft", "flow": "refresh_token", "tenant": "contoso.onmicrosoft.com",
             "client_id": "native-app", "client_secret": "cs", "refresh_token": grant.refresh_token,
             "token_url": idp.microsoft_token_url()}
    spec = tenant(oauth_spec(table), tmp_path)
    running = TokenSource(spec)
    running.for_login()
    TokenSource(spec).for_login()  # the other process: rotates and stores
    assert running.for_login().value.reveal()  # its own refresh token is dead; the stored one works
    assert idp.token_requests("native-app") == 4
    stored = SqliteTokenStore(tmp_path / "state" / "checkpoints.sqlite3").load("contoso")
    assert stored is not None and stored.refresh_token.reveal() == grant.refresh_token


def test_google_service_account_jwt_bearer(idp: IdentityProvider, tmp_path: Path) -> None:
    key = generate_rsa_key()
    email = "imap-reader@project.iam.gserviceaccount.com"
    idp.add_service_account(email, key.public_pem, subjects=[MAILBOX])
    key_file = write_service_account_file(tmp_path / "sa.json", email, idp.google_token_url, key)
    table = {"provider": "google", "flow": "service_account", "service_account_file": str(key_file),
             "token_url": idp.google_token_url}
    assert provider_for(tenant(oauth_spec(table), tmp_path))(None).access_token.reveal()
    with pytest.raises(FatalError, match="unauthorized_client"):  # not delegated for this mailbox
        provider_for(tenant(oauth_spec(table), tmp_path, username="info@contoso.example"))(None)
    inline = oauth_spec({"provider": "google", "flow": "service_account",
                         "service_account_json": key_file.read_text(), "token_url": idp.google_token_url})
    assert provider_for(tenant(inline, tmp_path))(None).lifetime > 0


def test_throttled_or_down_token_endpoint_is_transient(idp: IdentityProvider, tmp_path: Path) -> None:
    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    spec = tenant(oauth_spec({"provider": "microsoft", "tenant": "contoso.onmicrosoft.com",
                              "client_id": "app-1", "client_secret": "app-secret",
                              "token_url": idp.microsoft_token_url(), "token_timeout": 5}), tmp_path)
    idp.answer_errors(1, status=429, retry_after=7)
    with pytest.raises(ConnectionLost, match=r"HTTP 429, Retry-After 7s \(Suggested Backoff Time: 7000 ms\)"):
        provider_for(spec)(None)
    with pytest.raises(ConnectionLost) as throttled:
        idp.answer_errors(1, status=429, retry_after=7)
        provider_for(spec)(None)
    from tenant_proc.session.timing import reconnect_delay
    assert reconnect_delay(1.0, throttled.value) >= 7.0  # the session waits what the endpoint asked
    idp.answer_errors(1, status=503)
    with pytest.raises(ConnectionLost, match="HTTP 503"):
        provider_for(spec)(None)
    idp.down()
    with pytest.raises(ConnectionLost, match="cannot connect"):
        provider_for(spec)(None)
    idp.up()
    assert provider_for(spec)(None).access_token.reveal()


def test_token_endpoint_over_tls_with_token_ca_file(tmp_path: Path) -> None:
    with IdentityProvider(tls=True) as idp:
        idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
        table = {"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "app-1",
                 "client_secret": "app-secret", "token_url": idp.microsoft_token_url()}
        with pytest.raises(FatalError, match="certificate verification failed"):
            provider_for(tenant(oauth_spec(table), tmp_path))(None)
        trusted = oauth_spec({**table, "token_ca_file": idp.ca_file})
        assert provider_for(tenant(trusted, tmp_path))(None).access_token.reveal()


def test_token_command_runs_without_shell_or_inherited_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "must-not-leak")
    script = tmp_path / "token.py"
    script.write_text("import json, os\n"
                      "assert 'SUPABASE_SERVICE_ROLE_KEY' not in os.environ\n"
                      "print(json.dumps({'access_token': 'cmd-' + os.environ['IDLE_USERNAME'], 'expires_in': 120}))\n")
    spec = tenant(oauth_spec({"provider": "command", "command": [sys.executable, str(script)]}), tmp_path)
    answer = provider_for(spec)(None)
    assert answer.access_token.reveal() == f"cmd-{MAILBOX}" and answer.lifetime == 120
    failing = tenant(oauth_spec({"provider": "command", "command": [sys.executable, "-c", "import sys; sys.exit(3)"]}), tmp_path)
    with pytest.raises(FatalError, match="exited with status 3"):
        provider_for(failing)(None)
    slow = tenant(oauth_spec({"provider": "command", "token_timeout": 1,
                              "command": [sys.executable, "-c", "import time; time.sleep(30)"]}), tmp_path)
    with pytest.raises(ConnectionLost, match="no token within 1s"):
        provider_for(slow)(None)


def test_microsoft_certificate_credential_sends_a_signed_client_assertion(tmp_path: Path) -> None:
    """private_key_jwt as Entra ID wants it, checked by a real HTTP endpoint in this test (the
    stand-in takes client secrets only): x5t = SHA-1 thumbprint, RS256, iss = sub = client_id,
    aud = token_url, verified with the certificate's public key."""
    import base64
    import datetime
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import parse_qsl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    key = generate_rsa_key()
    private = serialization.load_pem_private_key(key.private_pem, password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idle-supervisor app")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(private, hashes.SHA256()))
    pem_file = tmp_path / "app.pem"
    pem_file.write_bytes(key.private_pem + cert.public_bytes(serialization.Encoding.PEM))
    forms: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            forms.append(dict(parse_qsl(body)))
            payload = json.dumps({"access_token": "cert-token", "expires_in": 3599, "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/contoso/oauth2/v2.0/token"
        spec = tenant(oauth_spec({"provider": "microsoft", "tenant": "contoso", "client_id": "app-9",
                                  "certificate_file": str(pem_file), "token_url": url}), tmp_path)
        assert provider_for(spec)(None).access_token.reveal() == "cert-token"
    finally:
        server.shutdown()
        server.server_close()
    [form] = forms
    assert form["grant_type"] == "client_credentials" and form["client_id"] == "app-9"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in form and form["scope"] == "https://outlook.office365.com/.default"
    token = jwt.decode(form["client_assertion"], RSAKey.import_key(key.public_pem), algorithms=["RS256"])
    thumbprint = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).rstrip(b"=").decode()
    assert token.header["x5t"] == thumbprint
    assert token.claims["iss"] == token.claims["sub"] == "app-9" and token.claims["aud"] == url
