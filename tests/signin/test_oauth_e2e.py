"""OAuth2 sign-in end to end (issue 11): the real supervisor, real tenant processes, the real
Dovecot checking every token at the identity-provider stand-in (tests/servers/oauth/idp.py).

Each test drives the product only through its interface (config with `auth` and
`[tenant.oauth]`, signals, CLI, status.json, jsonl) and steers the provider from outside:
short token lifetimes, `doveadm kick` as Gmail ends a session when its token expires,
revocation, the endpoint going down or throttling. docs/oauth-interface.md (oauth branch) has
the exact error lines and state tables these tests expect.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.faultlib import write_spy
from tests.harness.oauth_tenants import (
    FLOWS,
    OAuthTenant,
    oauth_tenant,
    private_key_lines,
    sasl_forms,
)
from tests.harness.supervisor_run import REPO_ROOT, SupabaseRun, SupervisorRun, unique_emails
from tests.servers.certs import CertPaths
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message
from tests.servers.oauth.idp import IdentityProvider

pytestmark = pytest.mark.integration

MECHANISMS = ("xoauth2", "oauthbearer")
SHORT = {"microsoft/client_credentials": "mscc", "microsoft/refresh_token": "msrt",
         "google/service_account": "gsa", "google/refresh_token": "grt", "command": "cmd"}
FAILING_HOST = "127.0.0.3"  # logins refused by Dovecot dial their own address (auth penalty)


@pytest.fixture
def tls_idp() -> Iterator[IdentityProvider]:
    """The stand-in on https with the tests' private CA, as real token endpoints are."""
    with IdentityProvider(token_lifetime=60, tls=True) as server:
        yield server


@pytest.fixture
def tls_oauth_dovecot(tmp_path: Path, certs: CertPaths, tls_idp: IdentityProvider) -> Iterator[Dovecot]:
    with Dovecot(tmp_path / "dovecot", oauth2_introspection_url=tls_idp.introspection_url) as server:
        yield server


def oauth_run(workdir: Path, dovecot: Dovecot, tenants: list[OAuthTenant], **kwargs: Any) -> SupervisorRun:
    env: dict[str, str] = {}
    for t in tenants:
        env.update(t.env)
    kwargs.setdefault("imap", {"reconnect_backoff_max": 2})
    return SupervisorRun(workdir, dovecot, [t.entry for t in tenants], extra_env=env, **kwargs)


def kick_when_connected(dovecot: Dovecot, mailbox: str, timeout: float = 20) -> None:
    """`doveadm kick` once the tenant's session exists (kick fails when there is none)."""
    deadline = time.monotonic() + timeout
    while mailbox not in dovecot.who():
        assert time.monotonic() < deadline, f"{mailbox} never had a session to kick"
        time.sleep(0.1)
    dovecot.kick(mailbox)


def subjects(run: SupervisorRun, tid: str) -> list[str]:
    return sorted(e["subject"] for e in run.emails() if e["tenant_id"] == tid)


# ---------------------------------------------------------------------- sign-in

def test_each_provider_and_flow_signs_in_with_both_mechanisms(
        tls_idp: IdentityProvider, tls_oauth_dovecot: Dovecot, tmp_path: Path) -> None:
    tenants = [oauth_tenant(tls_idp, tmp_path / "keys", flow, f"{SHORT[flow]}-{mech[:2]}", mech)
               for flow in FLOWS for mech in MECHANISMS]
    with oauth_run(tmp_path / "run", tls_oauth_dovecot, tenants).start(timeout=90) as run:
        states = {tid: t["state"] for tid, t in run.status()["tenants"].items()}
        assert set(states.values()) == {"idle"}, f"{states}\n{run.log_text()[-3000:]}"
        for t in tenants:
            tls_oauth_dovecot.deliver(t.mailbox, make_message(f"hello {t.entry.id}"))
        emails = run.wait_emails(len(tenants), timeout=30)
        assert {e["tenant_id"]: e["subject"] for e in emails} == {t.entry.id: f"hello {t.entry.id}" for t in tenants}
    log = tls_oauth_dovecot.log_path.read_text()
    for t in tenants:
        assert f"Login: user=<{t.mailbox}>, method={t.entry.auth.upper()}" in log  # type: ignore[union-attr]
    counts = tls_idp.by_grant_type
    assert counts["client_credentials"] >= 4 and counts["refresh_token"] >= 4
    assert counts["urn:ietf:params:oauth:grant-type:jwt-bearer"] >= 2
    for t in tenants:
        if t.entry.id.startswith("msrt"):
            assert len(t.grant.refresh_history) >= 2, "the rotated refresh token was never used"


def test_check_shows_the_method_the_token_and_the_login(idp: IdentityProvider, oauth_dovecot: Dovecot,
                                                        tmp_path: Path) -> None:
    good = oauth_tenant(idp, tmp_path / "keys", "microsoft/client_credentials", "good")
    bad = oauth_tenant(idp, tmp_path / "keys", "microsoft/client_credentials", "bad", host=FAILING_HOST)
    bad.env = {name: "not-the-secret" for name in bad.env}
    run = oauth_run(tmp_path / "run", oauth_dovecot, [good, bad])
    result = run.cli("check", timeout=90)
    lines = {line.split(" ", 1)[0]: line for line in result.stdout.splitlines()}
    assert result.returncode == 1, result.stdout + result.stderr
    assert "OK TLS, XOAUTH2 via microsoft client_credentials: token obtained (lifetime" in lines["good"]
    assert "login OK" in lines["good"]
    assert "FAIL XOAUTH2 via microsoft client_credentials: no token:" in lines["bad"]
    assert "invalid_client" in lines["bad"]
    assert "Traceback" not in result.stderr
    for secret in [*good.secrets, "not-the-secret", *idp.issued_secrets()]:
        assert secret not in result.stdout + result.stderr


# ---------------------------------------------------------------------- token lifecycle

@pytest.mark.slow
def test_token_expiry_while_idle_reconnects_in_process_and_loses_nothing(
        idp: IdentityProvider, oauth_dovecot: Dovecot, tmp_path: Path) -> None:
    idp.token_lifetime = 4
    t = oauth_tenant(idp, tmp_path / "keys", "google/service_account", "gsa")
    with oauth_run(tmp_path / "run", oauth_dovecot, [t]).start(timeout=30) as run:
        oauth_dovecot.deliver(t.mailbox, make_message("before expiry"))
        run.wait_emails(1, timeout=20)
        pid = run.child_pids()["gsa"]
        for round_ in (1, 2):
            time.sleep(idp.token_lifetime + 1)  # the session's token has expired at the provider
            requests_before = idp.token_requests(t.grant.client_id)
            kick_when_connected(oauth_dovecot, t.mailbox)  # as Gmail ends the session
            oauth_dovecot.deliver(t.mailbox, make_message(f"while reconnecting {round_}"))
            run.wait_emails(1 + round_, timeout=30)
            assert idp.token_requests(t.grant.client_id) > requests_before, "reconnected with the old token?"
        status = run.wait_for(lambda s: s["tenants"]["gsa"]["state"] == "idle", 20, "idle again")["tenants"]["gsa"]
        time.sleep(1)  # a duplicate would show up by now
        emails = run.emails()
    assert len(emails) == len(unique_emails(emails)) == 3
    assert subjects(run, "gsa") == ["before expiry", "while reconnecting 1", "while reconnecting 2"]
    assert status["pid"] == pid and status["restarts"] == 0 and status["reconnects"] >= 2


@pytest.mark.slow
def test_rotated_refresh_token_survives_a_supervisor_restart(
        idp: IdentityProvider, oauth_dovecot: Dovecot, tmp_path: Path) -> None:
    t = oauth_tenant(idp, tmp_path / "keys", "microsoft/refresh_token", "msrt")
    configured = t.grant.refresh_token
    run = oauth_run(tmp_path / "run", oauth_dovecot, [t])
    with run.start(timeout=30):
        assert run.tenant("msrt")["state"] == "idle", run.log_text()[-3000:]
        kick_when_connected(oauth_dovecot, t.mailbox)  # a reconnect rotates once more
        run.wait_for(lambda s: s["tenants"]["msrt"]["reconnects"] >= 1
                     and s["tenants"]["msrt"]["state"] == "idle", 30, "reconnected")
    assert run.proc is not None and run.proc.returncode == 0
    rotations = len(t.grant.refresh_history)
    assert rotations >= 3 and not idp.refresh_token_valid(configured)  # the configured one is dead now

    # Same config, same environment (still the configured, now dead, refresh token): the stored one is used.
    with run.start(timeout=30):
        assert run.tenant("msrt")["state"] == "idle", run.log_text()[-3000:]
        oauth_dovecot.deliver(t.mailbox, make_message("after restart"))
        run.wait_emails(1, timeout=20)
    assert len(t.grant.refresh_history) > rotations
    assert "invalid_grant" not in run.log_text()

    # Re-consent: the operator configures a fresh refresh token; it wins over the stored one.
    idp.revoke(t.grant)
    secret = next(v for k, v in t.env.items() if k.endswith("_SECRET"))
    fresh = idp.add_refresh_grant(t.grant.client_id, t.mailbox, client_secret=secret)
    assert fresh.refresh_token is not None
    run.extra_env = {**run.extra_env, "MSRT_REFRESH": fresh.refresh_token}
    with run.start(timeout=30):
        assert run.tenant("msrt")["state"] == "idle", run.log_text()[-3000:]
    assert len(fresh.refresh_history) >= 2


@pytest.mark.slow
def test_rotated_refresh_token_in_supabase_survives_a_redeploy_with_a_fresh_state_dir(
        idp: IdentityProvider, oauth_dovecot: Dovecot, pg_db: Any, postgrest: Any, tmp_path: Path) -> None:
    grant = idp.add_refresh_grant("sb-client", "sb@contoso.example", client_secret="sb-secret")
    oauth = {"provider": "microsoft", "flow": "refresh_token", "tenant": "contoso.onmicrosoft.com",
             "client_id": "sb-client", "token_url": idp.microsoft_token_url()}
    pg_db.execute(
        "INSERT INTO companies (id, name, imap_host, imap_port, imap_security, imap_username, imap_auth, "
        "oauth, oauth_client_secret, oauth_refresh_token) "
        "VALUES ('sb', 'Sb AB', '127.0.0.1', %s, 'tls', 'sb@contoso.example', 'xoauth2', %s, 'sb-secret', %s)",
        (oauth_dovecot.imaps_port, json.dumps(oauth), grant.refresh_token))
    settings = {"tenant_refresh": 300}
    with SupabaseRun(tmp_path / "first", oauth_dovecot, [], supervisor=settings, api=postgrest).start(
            wait_running=False) as run:
        run.wait_tenants({"sb"}, timeout=30)
        assert run.stop() == 0
    assert len(grant.refresh_history) >= 2  # the seed in the row is dead now
    assert pg_db.execute("SELECT refresh_token FROM oauth_tokens WHERE company_id = 'sb'") == [(grant.refresh_token,)]
    with SupabaseRun(tmp_path / "second", oauth_dovecot, [], supervisor=settings, api=postgrest).start(
            wait_running=False) as run:
        run.wait_tenants({"sb"}, timeout=30)
        oauth_dovecot.deliver("sb@contoso.example", make_message("after the redeploy"))
        assert [e["subject"] for e in run.wait_emails(1, timeout=20)] == ["after the redeploy"]
        assert "invalid_grant" not in run.log_text()
        for secret in ["sb-secret", *grant.refresh_history]:
            assert secret not in run.log_text() and secret not in (run.state_dir / "status.json").read_text()


@pytest.mark.slow
def test_revoked_grant_fails_clearly_with_a_bounded_number_of_token_requests(
        idp: IdentityProvider, oauth_dovecot: Dovecot, tmp_path: Path) -> None:
    good = oauth_tenant(idp, tmp_path / "keys", "microsoft/client_credentials", "good")
    revoked = oauth_tenant(idp, tmp_path / "keys", "microsoft/refresh_token", "revoked", host=FAILING_HOST)
    wrong = oauth_tenant(idp, tmp_path / "keys", "google/refresh_token", "wrong", host=FAILING_HOST)
    wrong.env["WRONG_SECRET"] = "not-the-google-secret"
    run = oauth_run(tmp_path / "run", oauth_dovecot, [good, revoked, wrong], supervisor={"restart_backoff": 0.5})
    with run.start(timeout=30):
        status = run.wait_for(lambda s: s["tenants"]["wrong"]["state"] == "failed"
                              and s["tenants"]["revoked"]["state"] == "idle", 30, "wrong failed")
        assert "tenant wrong: google sign-in failed: invalid_client" in status["tenants"]["wrong"]["last_error"]
        idp.revoke(revoked.grant)  # the customer withdrew consent
        kick_when_connected(oauth_dovecot, revoked.mailbox)
        status = run.wait_for(lambda s: s["tenants"]["revoked"]["state"] == "failed", 30, "revoked failed")
        line = status["tenants"]["revoked"]["last_error"]
        assert "tenant revoked: microsoft sign-in failed: invalid_grant" in line and "AADSTS" in line
        assert "tenant revoked: microsoft sign-in failed: invalid_grant" in run.log_text()
        before = {c: idp.token_requests(c) for c in ("revoked-client", "wrong-client")}
        time.sleep(10)  # a tight retry loop would show here
        after = {c: idp.token_requests(c) for c in ("revoked-client", "wrong-client")}
        assert after == before, f"token requests while failed: {before} -> {after}"
        assert after["revoked-client"] <= 4 and after["wrong-client"] <= 3
        assert run.tenant("good")["state"] == "idle" and run.tenant("good")["restarts"] == 0


@pytest.mark.slow
def test_token_endpoint_down_or_throttling_is_backoff_then_recovery(
        idp: IdentityProvider, oauth_dovecot: Dovecot, tmp_path: Path) -> None:
    t = oauth_tenant(idp, tmp_path / "keys", "microsoft/client_credentials", "down")
    with oauth_run(tmp_path / "run", oauth_dovecot, [t]).start(timeout=30) as run:
        pid = run.child_pids()["down"]
        idp.down()
        kick_when_connected(oauth_dovecot, t.mailbox)
        oauth_dovecot.deliver(t.mailbox, make_message("during the outage"))
        status = run.wait_for(lambda s: s["tenants"]["down"]["state"] == "backoff"
                              and "token endpoint" in (s["tenants"]["down"]["last_error"] or ""), 30, "backoff")
        assert "tenant down: microsoft token endpoint" in status["tenants"]["down"]["last_error"]
        time.sleep(3)
        assert run.tenant("down")["state"] == "backoff", "an unreachable endpoint is not an auth failure"
        idp.up()
        run.wait_emails(1, timeout=30)
        run.wait_for(lambda s: s["tenants"]["down"]["state"] == "idle", 30, "recovered")

        idp.answer_errors(2, status=429, retry_after=2)
        kick_when_connected(oauth_dovecot, t.mailbox)
        oauth_dovecot.deliver(t.mailbox, make_message("while throttled"))
        run.wait_for(lambda s: "Suggested Backoff Time: 2000 ms" in (s["tenants"]["down"]["last_error"] or ""),
                     30, "throttled backoff")
        run.wait_emails(2, timeout=30)
        status = run.wait_for(lambda s: s["tenants"]["down"]["state"] == "idle", 30, "recovered again")["tenants"]["down"]
        time.sleep(1)
        emails = run.emails()
    assert len(emails) == len(unique_emails(emails)) == 2
    assert status["pid"] == pid and status["restarts"] == 0


# ---------------------------------------------------------------------- secrets

@pytest.mark.slow
def test_no_oauth_secret_leaks(idp: IdentityProvider, oauth_dovecot: Dovecot, tmp_path: Path) -> None:
    tenants = [oauth_tenant(idp, tmp_path / "keys", flow, SHORT[flow], MECHANISMS[i % 2])
               for i, flow in enumerate(FLOWS)]
    refused = oauth_tenant(idp, tmp_path / "keys", "microsoft/client_credentials", "refused", host=FAILING_HOST)
    refused.env = {name: "the-wrong-client-secret" for name in refused.env}
    spy_file = tmp_path / "ipc-frames.jsonl"
    spy_dir = write_spy(tmp_path / "spy")
    run = oauth_run(tmp_path / "run", oauth_dovecot, [*tenants, refused])
    run.extra_env.update(IPC_SPY_FILE=str(spy_file), PYTHONPATH=f"{spy_dir}{os.pathsep}{REPO_ROOT}")
    with run.start(timeout=60):
        run.wait_for(lambda s: s["tenants"]["refused"]["state"] == "failed"
                     and all(s["tenants"][t.entry.id]["state"] == "idle" for t in tenants), 30, "up")
        for t in tenants:  # a reconnect each: new access tokens, one more rotation
            kick_when_connected(oauth_dovecot, t.mailbox)
            oauth_dovecot.deliver(t.mailbox, make_message(f"mail for {t.entry.id}"))
        run.wait_emails(len(tenants), timeout=30)
        run.wait_for(lambda s: all(s["tenants"][t.entry.id]["state"] == "idle" for t in tenants), 30, "idle")
        places: dict[str, bytes] = {
            "supervisor log": run.log_path.read_bytes(),
            "status.json": (run.state_dir / "status.json").read_bytes(),
            "status": run.cli("status").stdout.encode(),
            "status --json": run.cli("status", "--json").stdout.encode(),
            "jsonl": run.jsonl_path.read_bytes(),
        }
        children = run.live_children()
        assert len(children) >= len(tenants)
        for child in children:
            places[f"cmdline {child.pid}"] = Path(f"/proc/{child.pid}/cmdline").read_bytes()
            places[f"environ {child.pid}"] = Path(f"/proc/{child.pid}/environ").read_bytes()
        places["ipc frames"] = spy_file.read_bytes()
    places["supervisor log (after stop)"] = run.log_path.read_bytes()
    secrets: list[str] = ["the-wrong-client-secret"]
    for t in tenants:
        secrets += t.secrets + t.grant.refresh_history
        if t.private_key is not None:
            secrets += private_key_lines(t.private_key)
    for token, mailbox in idp.issued_access_tokens():
        secrets += [token, *sasl_forms(mailbox, token)]
    secrets += idp.issued_secrets()
    per_mailbox = Counter(mailbox for _, mailbox in idp.issued_access_tokens())
    for t in tenants:  # the test saw the tokens it looks for (a command's token may be reused)
        assert per_mailbox[t.mailbox] >= (1 if t.entry.id == "cmd" else 2), per_mailbox
    assert any(len(t.grant.refresh_history) >= 3 for t in tenants)  # old and new refresh tokens
    for where, data in places.items():
        for secret in set(secrets):
            assert secret.encode() not in data, f"an OAuth secret ({secret[:6]}...) found in {where}"
