"""Signing in to IMAP (tenant_proc/signin/login.py): XOAUTH2 and OAUTHBEARER against a real Dovecot,
with one retry on a refused token; non-ASCII passwords over AUTHENTICATE PLAIN; the OAuth
libraries preloaded only when a tenant needs them; and what `idle-supervisor check` reports.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tenant_proc.errors import FatalError
from tenant_proc.imap.connect import open_client
from tenant_proc.signin import login as signin
from tenant_proc.signin.login import login
from tests.servers.imap.dovecot import Dovecot
from tests.servers.oauth.idp import IdentityProvider
from tests.signin.test_signin import MAILBOX, oauth_spec, tenant

# ---------------------------------------------------------------- SASL against Dovecot

@pytest.mark.parametrize("auth", ["xoauth2", "oauthbearer"])
def test_sasl_login_and_one_retry_with_a_fresh_token(idp: IdentityProvider, oauth_dovecot: Dovecot,
                                                     tmp_path: Path, auth: str) -> None:
    idp.token_lifetime = 600  # not due at the next login: the cached token is reused
    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    table = {"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "app-1",
             "client_secret": "app-secret", "token_url": idp.microsoft_token_url()}
    spec = tenant(oauth_spec(table), tmp_path, dc=oauth_dovecot, auth=auth)
    client = open_client(spec)
    result = login(client, spec)
    assert result.method == auth.upper() and 500 < result.token_lifetime <= 600
    assert client.select_folder("INBOX", readonly=True) is not None
    client.logout()
    idp.expire_access_tokens()  # the server now refuses the token the tenant still holds
    client = open_client(replace(spec, host="127.0.0.3"))  # a refusal: its own address
    login(client, replace(spec, host="127.0.0.3"))
    client.logout()
    assert idp.token_requests("app-1") == 2


def test_a_fresh_token_refused_is_a_clear_auth_failure(idp: IdentityProvider, oauth_dovecot: Dovecot,
                                                       tmp_path: Path) -> None:
    idp.add_app("app-1", "app-secret", mailbox="someone-else@contoso.example")
    table = {"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "app-1",
             "client_secret": "app-secret", "token_url": idp.microsoft_token_url()}
    spec = tenant(oauth_spec(table), tmp_path, dc=oauth_dovecot, host="127.0.0.3")
    client = open_client(spec)
    with pytest.raises(FatalError, match="token refused by the IMAP server.*IMAP.AccessAsApp") as exc:
        login(client, spec)
    client.shutdown()
    assert exc.value.kind == "auth" and idp.token_requests("app-1") == 1
    assert all(secret not in str(exc.value) for secret in idp.issued_secrets())


# ---------------------------------------------------------------- passwords (issue 12 item 10)

def test_non_ascii_password_logs_in_over_authenticate_plain(dovecot: Dovecot, tmp_path: Path) -> None:
    dovecot.add_user("asa", "lösenord-ÅÄÖ-€")
    spec = tenant(None, tmp_path, dc=dovecot, username="asa", password="lösenord-ÅÄÖ-€")
    client = open_client(spec)
    assert login(client, spec).method == "PLAIN"
    client.logout()
    ascii_spec = tenant(None, tmp_path, dc=dovecot, username="alice", password="alice-pw")
    client = open_client(ascii_spec)
    assert login(client, ascii_spec).method == "LOGIN"
    client.logout()


def test_non_ascii_password_without_plain_is_a_clear_auth_error(tmp_path: Path) -> None:
    class NoPlain:
        def has_capability(self, capability: str) -> bool:
            return capability == "IMAP4REV1"

        def login(self, *args: Any) -> None:  # would raise UnicodeEncodeError in imaplib
            raise AssertionError("LOGIN must not be tried")

    spec = tenant(None, tmp_path, username="åsa", password="lösenord")
    with pytest.raises(FatalError, match="non-ASCII.*no AUTHENTICATE PLAIN") as exc:
        signin.password_login(NoPlain(), spec)  # type: ignore[arg-type]
    assert exc.value.kind == "auth" and "lösenord" not in str(exc.value)


def test_preload_imports_oauth_libraries_only_when_a_tenant_uses_oauth(tmp_path: Path) -> None:
    code = ("import sys; from tenant_proc.signin import login as signin; from tests.signin.test_signin import *; "
            "p = tenant(None, __import__('pathlib').Path('.')); signin.preload([p]); "
            "assert 'authlib' not in sys.modules; "
            "o = tenant(oauth_spec({'provider': 'command', 'command': ['true']}), __import__('pathlib').Path('.')); "
            "signin.preload([o]); assert 'authlib.integrations.httpx_client' in sys.modules; print('ok')")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------- idle-supervisor check

def test_check_reports_method_token_and_login(idp: IdentityProvider, oauth_dovecot: Dovecot, tmp_path: Path) -> None:
    from tenant_proc.probe import probe_tenant

    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    table = {"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "app-1",
             "client_secret": "app-secret", "token_url": idp.microsoft_token_url()}
    ok = probe_tenant(tenant(oauth_spec(table), tmp_path, dc=oauth_dovecot)).summary()
    assert ok.startswith("OK TLS, XOAUTH2 via microsoft client_credentials: token obtained (lifetime ")
    assert "login OK, IDLE, UIDVALIDITY" in ok
    bad = probe_tenant(tenant(oauth_spec({**table, "client_secret": "nope-wrong"}), tmp_path,
                              dc=oauth_dovecot)).summary()
    assert bad.startswith("FAIL XOAUTH2 via microsoft client_credentials: no token: tenant contoso: "
                          "microsoft sign-in failed: invalid_client (AADSTS7000215)")
    idp.add_app("app-2", "other-secret", mailbox="info@contoso.example")  # a token for another mailbox
    refused = probe_tenant(tenant(oauth_spec({**table, "client_id": "app-2", "client_secret": "other-secret"}),
                                  tmp_path, dc=oauth_dovecot, host="127.0.0.3")).summary()
    assert "token obtained (lifetime" in refused and "login failed" in refused
    assert "token refused by the IMAP server" in refused and "nope-wrong" not in bad
