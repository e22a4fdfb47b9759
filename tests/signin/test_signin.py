"""Sign-in's tokens (tenant_proc/signin): refresh timing, request budget, rotation storage on
SQLite and Supabase, error lines, and the oauth settings from a config table or Supabase columns.

tenant(), oauth_spec() and MAILBOX are shared by test_providers.py and test_login.py; the preload
test in test_login.py imports them from this module by name, in a subprocess.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import ConfigError
from supervisor.tenants.oauth_rows import oauth_spec_from_row
from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.signin import errors
from tenant_proc.signin.providers.base import TokenResponse
from tenant_proc.signin.storage import SqliteTokenStore, seed_hash
from tenant_proc.signin.tokens import AccessToken, RequestBudget, TokenSource
from tenant_proc.spec import OAuthSpec, Secret, StateSpec, TenantSpec
from tests.servers.imap.dovecot import Dovecot

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
    # "Not connected" is a reconnect (it often passes, tests/signin/test_refusals.py); once it
    # persists the session raises not_connected(), which names the remedy.
    with pytest.raises(ConnectionLost, match="User is authenticated but not connected"):
        errors.raise_if_mailbox_refused(spec, Exception("select failed: User is authenticated but not connected."))
    errors.raise_if_mailbox_refused(spec, Exception("select failed: no such folder"))  # not this case
    hint = errors.not_connected(spec)
    assert isinstance(hint, FatalError) and hint.kind == "auth" and "Add-MailboxPermission" in str(hint)


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
