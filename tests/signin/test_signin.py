"""Sign-in (tenant_proc/signin): refresh timing, request budget, error lines, rotation storage,
the grants against the identity-provider stand-in (tests/servers/oauth/idp.py), SASL against a real Dovecot,
and non-ASCII passwords over AUTHENTICATE PLAIN."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import ConfigError
from supervisor.tenants.oauth_rows import oauth_spec_from_row
from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.imap.connect import open_client
from tenant_proc.signin import errors
from tenant_proc.signin import login as signin
from tenant_proc.signin.login import login
from tenant_proc.signin.providers import provider_for
from tenant_proc.signin.providers.base import TokenResponse
from tenant_proc.signin.storage import SqliteTokenStore, seed_hash
from tenant_proc.signin.tokens import AccessToken, RequestBudget, TokenSource
from tenant_proc.spec import OAuthSpec, Secret, StateSpec, TenantSpec
from tests.servers.imap.dovecot import Dovecot
from tests.servers.oauth.idp import IdentityProvider
from tests.servers.oauth.idp_keys import generate_rsa_key, write_service_account_file

MAILBOX = "support@contoso.example"


def oauth_spec(table: dict[str, Any], environ: dict[str, str] | None = None, base_dir: str = ".") -> OAuthSpec:
    return oauth_spec_from_row({"auth": "xoauth2", "oauth": table}, environ or {}, base_dir)


def tenant(oauth: OAuthSpec | None, tmp_path: Path, dc: Dovecot | None = None, auth: str = "xoauth2",
           username: str = MAILBOX, password: str = "", host: str | None = None) -> TenantSpec:
    return TenantSpec(
        id="contoso", name="Contoso AB", host=host or (dc.host if dc else "127.0.0.1"),
        port=dc.imaps_port if dc else 993, security="tls", username=username,
        password=Secret(password), ca_file=str(dc.ca_file) if dc else None,
        state=StateSpec(state_dir=str(tmp_path / "state")), auth=auth if oauth else "password",
        oauth=oauth,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeFetch:
    """Pure-logic stand-in for a provider: counts calls, can rotate refresh tokens."""

    def __init__(self, lifetime: float = 3600.0, rotate: bool = False) -> None:
        self.lifetime = lifetime
        self.rotate = rotate
        self.calls: list[str | None] = []

    def __call__(self, refresh: Secret | None) -> TokenResponse:
        self.calls.append(refresh.reveal() if refresh else None)
        n = len(self.calls)
        return TokenResponse(Secret(f"at-{n}"), self.lifetime,
                             Secret(f"rt-{n}") if self.rotate else None)


# ---------------------------------------------------------------- refresh timing and budget

def test_refresh_is_due_with_less_than_five_minutes_or_a_fifth_of_the_life_left() -> None:
    hour = AccessToken(Secret("t"), obtained_at=0.0, lifetime=3600.0)
    assert not hour.due(3600 - 721) and hour.due(3600 - 719)  # 20 % of an hour = 12 minutes
    day = AccessToken(Secret("t"), obtained_at=0.0, lifetime=86400.0)
    assert not day.due(86400 - 17281) and day.due(86400 - 17279)
    ten_minutes = AccessToken(Secret("t"), obtained_at=0.0, lifetime=600.0)
    assert not ten_minutes.due(299) and ten_minutes.due(301)  # 5 minutes beat 20 % (2 minutes)
    assert AccessToken(Secret("t"), 0.0, 5.0).due(0.0)  # shorter than the margin: always fetched anew


def test_request_budget_is_a_sliding_hour() -> None:
    budget = RequestBudget(limit=3, window=3600)
    for t in (0, 10, 20):
        assert budget.available(t)
        budget.spend(t)
    assert not budget.available(30) and budget.next_free(30) == pytest.approx(3570)
    assert budget.available(3600.5)


def test_token_is_cached_until_due_then_refreshed(tmp_path: Path) -> None:
    spec = tenant(oauth_spec({"provider": "command", "command": ["true"]}), tmp_path)
    clock, fetch = Clock(), FakeFetch(lifetime=3600)
    source = TokenSource(spec, fetch=fetch, clock=clock)
    first = source.for_login()
    assert source.fetched_now and first.value.reveal() == "at-1"
    clock.now += 2000  # 1600 s left: not due
    assert source.for_login() is first and not source.fetched_now
    clock.now += 1000  # 600 s left < 720 s: due
    assert source.for_login().value.reveal() == "at-2" and len(fetch.calls) == 2


def test_refused_token_is_fetched_again_once_unless_it_was_just_fetched(tmp_path: Path) -> None:
    spec = tenant(oauth_spec({"provider": "command", "command": ["true"]}), tmp_path)
    clock, fetch = Clock(), FakeFetch()
    source = TokenSource(spec, fetch=fetch, clock=clock)
    source.for_login()
    assert source.refetch() is None  # fetched for this very login: a new one would fare no better
    source.for_login()  # next login: the cached token, which looked valid
    assert not source.fetched_now
    assert source.refetch().value.reveal() == "at-2"
    assert source.refetch() is None


def test_budget_spent_uses_a_valid_token_else_waits_with_a_suggested_backoff(tmp_path: Path) -> None:
    spec = tenant(oauth_spec({"provider": "command", "command": ["true"]}), tmp_path)
    clock, fetch = Clock(), FakeFetch(lifetime=60)  # always due: every login asks
    source = TokenSource(spec, fetch=fetch, clock=clock, budget=RequestBudget(limit=2))
    source.for_login()
    source.for_login()
    clock.now += 10
    assert source.for_login().value.reveal() == "at-2"  # spent, but at-2 is still valid
    clock.now += 60
    with pytest.raises(ConnectionLost, match=r"limited to 2 per hour.*Suggested Backoff Time: \d+ ms"):
        source.for_login()
    assert len(fetch.calls) == 2


# ---------------------------------------------------------------- rotation on SQLite

def test_rotated_refresh_token_is_stored_and_wins_over_the_seed_until_the_seed_changes(tmp_path: Path) -> None:
    table = {"provider": "microsoft", "flow": "refresh_token", "tenant": "contoso.example",
             "client_id": "app", "refresh_token": "seed-1"}
    spec = tenant(oauth_spec(table), tmp_path)
    store = SqliteTokenStore(tmp_path / "state" / "checkpoints.sqlite3")
    fetch = FakeFetch(rotate=True)
    TokenSource(spec, fetch=fetch, store=store).for_login()
    assert fetch.calls == ["seed-1"]
    stored = store.load("contoso")
    assert stored is not None and stored.refresh_token.reveal() == "rt-1"
    assert stored.seed_hash == seed_hash(Secret("seed-1"))

    # A restart: a new process, a new source, same configured seed -> the stored token is used.
    TokenSource(spec, fetch=fetch, store=SqliteTokenStore(store.path)).for_login()
    assert fetch.calls[-1] == "rt-1" and store.load("contoso").refresh_token.reveal() == "rt-2"

    # The operator configured a new refresh token (re-consent): it wins over the stored one.
    renewed = tenant(oauth_spec({**table, "refresh_token": "seed-2"}), tmp_path)
    TokenSource(renewed, fetch=fetch, store=SqliteTokenStore(store.path)).for_login()
    assert fetch.calls[-1] == "seed-2"
    assert store.load("contoso").seed_hash == seed_hash(Secret("seed-2"))
    assert oct((tmp_path / "state" / "checkpoints.sqlite3").stat().st_mode & 0o777) == "0o600"


def test_a_store_failure_keeps_the_new_token_and_saves_it_at_the_next_login(tmp_path: Path) -> None:
    table = {"provider": "google", "flow": "refresh_token", "client_id": "c", "client_secret": "s",
             "refresh_token": "seed"}
    spec = tenant(oauth_spec(table), tmp_path)

    class FlakyStore(SqliteTokenStore):
        fail = True

        def save(self, *args: Any) -> None:
            if self.fail:
                from tenant_proc.store.api import StoreError
                raise StoreError("disk full")
            super().save(*args)

    store = FlakyStore(tmp_path / "tokens.sqlite3")
    clock, fetch = Clock(), FakeFetch(lifetime=60, rotate=True)
    source = TokenSource(spec, fetch=fetch, store=store, clock=clock)
    source.for_login()
    assert store.load("contoso") is None
    store.fail = False
    source.for_login()  # saves the pending rt-1 first, then fetches with it and stores rt-2
    assert fetch.calls == ["seed", "rt-1"] and store.load("contoso").refresh_token.reveal() == "rt-2"


# ---------------------------------------------------------------- error lines

def test_oauth_errors_become_one_line_naming_tenant_provider_and_the_fix(tmp_path: Path) -> None:
    spec = tenant(oauth_spec({"provider": "microsoft", "tenant": "t", "client_id": "c",
                              "client_secret": "very-secret-value"}), tmp_path)
    exc = errors.oauth_error(spec, "invalid_client",
                             "AADSTS7000215: Invalid client secret provided: very-secret-value. "
                             "Trace ID: 123", ["very-secret-value"])
    assert isinstance(exc, FatalError) and exc.kind == "auth"
    assert str(exc).startswith("tenant contoso: microsoft sign-in failed: invalid_client (AADSTS7000215)")
    assert "secret's value" in str(exc) and "very-secret-value" not in str(exc)
    revoked = errors.oauth_error(spec, "invalid_grant", "Token has been expired or revoked.")
    assert isinstance(revoked, FatalError) and "consent" in str(revoked)
    assert "unauthorized_client" in str(errors.oauth_error(spec, "unauthorized_client", None))
    assert isinstance(errors.oauth_error(spec, "temporarily_unavailable", "busy"), ConnectionLost)
    with pytest.raises(FatalError, match="Add-MailboxPermission"):
        errors.raise_if_mailbox_refused(spec, Exception("select failed: User is authenticated but not connected."))
    errors.raise_if_mailbox_refused(spec, Exception("select failed: no such folder"))  # not this case


def test_scrub_removes_secrets_and_token_shaped_text() -> None:
    text = "POST body client_secret=abc123&refresh_token=rt-xyz failed; Authorization: Bearer at-qqq; s3cr3t"
    clean = errors.scrub(text, [Secret("s3cr3t")])
    assert "abc123" not in clean and "rt-xyz" not in clean and "at-qqq" not in clean and "s3cr3t" not in clean


# ---------------------------------------------------------------- config

def test_config_fills_defaults_and_refuses_plain_http_off_loopback() -> None:
    spec = oauth_spec({"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "c",
                       "client_secret_env": "SECRET"}, {"SECRET": "x"})
    assert spec.token_url == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    assert spec.scope == "https://outlook.office365.com/.default" and spec.client_secret == Secret("x")
    assert "x" not in repr(spec).replace("xoauth", "")
    google = oauth_spec({"provider": "google", "flow": "refresh_token", "client_id": "c",
                         "client_secret": "s", "refresh_token": "r"})
    assert google.token_url == "https://oauth2.googleapis.com/token" and google.scope == "https://mail.google.com/"
    for bad in ({"provider": "google", "flow": "refresh_token", "client_id": "c", "client_secret": "s",
                 "refresh_token": "r", "token_url": "http://idp.example/token"},
                {"provider": "microsoft", "client_id": "c", "client_secret": "s"},  # no tenant
                {"provider": "command", "command": "get-token --now"},  # a string, not argv
                {"provider": "microsoft", "tenant": "t", "client_id": "c"},  # no credential
                {"provider": "okta"}):
        with pytest.raises(ConfigError):
            oauth_spec(bad)
    with pytest.raises(ConfigError, match="not set"):
        oauth_spec({"provider": "microsoft", "tenant": "t", "client_id": "c", "client_secret_env": "NOPE"})


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
    from tenant_proc.session import reconnect_delay
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


# ---------------------------------------------------------------- Supabase columns and token table

@pytest.mark.integration
def test_supabase_company_columns_and_token_table(postgrest, pg_db) -> None:
    from supervisor.tenants.companies import fetch_company_rows
    from tenant_proc.signin.storage import SupabaseTokenStore
    from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY

    pg_db.execute(
        "INSERT INTO companies (id, name, imap_host, imap_username, imap_auth, oauth, "
        "oauth_client_secret, oauth_refresh_token) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
        ("contoso", "Contoso AB", "outlook.office365.com", MAILBOX, "xoauth2",
         json.dumps({"provider": "microsoft", "flow": "refresh_token", "tenant": "contoso.example",
                     "client_id": "app"}), "client-secret", "seed-token"))
    [row] = fetch_company_rows(postgrest.url, Secret(TEST_SERVICE_KEY))
    assert row["auth"] == "xoauth2" and "password" not in row
    spec = oauth_spec_from_row(row, {}, ".")
    assert spec.client_secret == Secret("client-secret") and spec.refresh_token == Secret("seed-token")
    assert spec.scope.endswith("offline_access")

    store = SupabaseTokenStore(postgrest.url, TEST_SERVICE_KEY)
    assert store.load("contoso") is None
    store.save("contoso", Secret("rotated-1"), seed_hash(spec.refresh_token))
    store.save("contoso", Secret("rotated-2"), seed_hash(spec.refresh_token))
    stored = store.load("contoso")
    assert stored is not None and stored.refresh_token.reveal() == "rotated-2"
    assert stored.seed_hash == seed_hash(Secret("seed-token"))


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
