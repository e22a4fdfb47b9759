"""`idle-supervisor authorize` end to end: companies configured with `flow = "refresh_token"` and
no token wait in `failed`; the operator runs `authorize` (a browser, or the device flow, played
by tests/servers/oauth/browser.py), the running supervisor is told, and the company signs in to
the real Dovecot (its oauth2 passdb asking the stand-in about every token) and handles mail.
Microsoft (browser and device flow) and Google (browser), state in SQLite and in Supabase."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.harness.oauth_tenants import consent_tenant, start_authorize
from tests.harness.supervisor_run import SupabaseRun, SupervisorRun
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message
from tests.servers.oauth.browser import enter_device_code, open_in_browser
from tests.servers.oauth.idp import IdentityProvider

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NO_TOKEN = "sign-in failed: no refresh token yet: run `idle-supervisor authorize"
TOLD = re.compile(r"asked supervisor pid \d+ to reload \(SIGHUP\) over the control socket$")
DEVICE_LINE = re.compile(r"To sign in as (\S+), open (\S+) and enter the code (\S+)")


def waiting_in_failed(run: SupervisorRun, tids: list[str]) -> None:
    run.wait_for(lambda s: all(s["tenants"][t]["state"] == "failed"
                               and NO_TOKEN in (s["tenants"][t]["last_error"] or "") for t in tids),
                 30, f"{tids} failed for lack of a token")


def test_failed_companies_sign_in_and_handle_mail_after_authorize(
        idp: IdentityProvider, oauth_dovecot: Dovecot, tmp_path: Path) -> None:
    microsoft = consent_tenant(idp, "msft")                           # a public client
    google = consent_tenant(idp, "goog", "google", client_secret="g-desktop-secret")
    run = SupervisorRun(tmp_path / "run", oauth_dovecot, [microsoft.entry, google.entry],
                        extra_env={**microsoft.env, **google.env}, imap={"reconnect_backoff_max": 2})
    outputs: list[str] = []
    with run.start(timeout=30):
        waiting_in_failed(run, ["msft", "goog"])
        for tenant in (microsoft, google):
            with start_authorize(run, tenant.entry.id) as authorize:
                visit = open_in_browser(authorize.url())
                code, out, err = authorize.finish()
            assert (code, err, visit.page_status) == (0, "", 200), out
            assert TOLD.search(out.splitlines()[-1]), out
            outputs += [out, visit.page]
            run.wait_for(lambda s, t=tenant.entry.id: s["tenants"][t]["state"] == "idle", 30, "signed in")
        for tenant in (microsoft, google):
            oauth_dovecot.deliver(tenant.mailbox, make_message(f"hello {tenant.entry.id}"))
        emails = run.wait_emails(2, timeout=30)
        assert {e["tenant_id"]: e["subject"] for e in emails} == {"msft": "hello msft", "goog": "hello goog"}
        assert all(t["restarts"] == 0 or t["state"] == "idle" for t in run.status()["tenants"].values())
    log = oauth_dovecot.log_path.read_text()
    for tenant in (microsoft, google):
        assert f"Login: user=<{tenant.mailbox}>, method=XOAUTH2" in log
    for secret in [*idp.issued_secrets(), "g-desktop-secret"]:
        for text in (*outputs, run.log_text()):
            assert secret not in text, f"a secret ({secret[:8]}...) leaked"


def test_the_device_flow_with_companies_and_tokens_in_supabase(
        idp: IdentityProvider, oauth_dovecot: Dovecot, pg_db: Any, postgrest: Any, tmp_path: Path) -> None:
    tenant = consent_tenant(idp, "dev")  # public: the device flow's refresh tokens take no secret
    oauth = tenant.entry.oauth
    pg_db.execute(
        "INSERT INTO companies (id, name, imap_host, imap_port, imap_security, imap_username, imap_auth, oauth) "
        "VALUES ('dev', 'Dev AB', '127.0.0.1', %s, 'tls', %s, 'xoauth2', %s)",
        (oauth_dovecot.imaps_port, tenant.mailbox, json.dumps(oauth)))
    idp.consent.device_interval = 1
    run = SupabaseRun(tmp_path / "run", oauth_dovecot, [], api=postgrest)
    with run.start(wait_running=False):
        waiting_in_failed(run, ["dev"])
        with start_authorize(run, "dev", "--device") as authorize:
            _, uri, user_code = DEVICE_LINE.fullmatch(authorize.wait_line(DEVICE_LINE.match)).groups()  # type: ignore[union-attr]
            enter_device_code(uri, user_code, tenant.mailbox)
            code, out, err = authorize.finish(60)
        assert (code, err) == (0, ""), out
        assert out.splitlines()[-1].startswith(f"tenant dev: authorized as {tenant.mailbox}; refresh token "
                                               "stored in Supabase (oauth_tokens); asked supervisor pid")
        rows = pg_db.execute("SELECT refresh_token, seed_hash FROM oauth_tokens WHERE company_id = 'dev'")
        # The consent's token under the empty seed (the tenant may have rotated it already).
        assert len(rows) == 1 and rows[0][1] == hashlib.sha256(b"").hexdigest()
        assert rows[0][0] in idp.consent.grants[-1].refresh_history
        run.wait_tenants({"dev"}, timeout=30)
        oauth_dovecot.deliver(tenant.mailbox, make_message("after the device flow"))
        assert [e["subject"] for e in run.wait_emails(1, timeout=30)] == ["after the device flow"]
    # Rotated since (Microsoft rotates on every use): the newest one is stored, as before.
    assert pg_db.execute("SELECT refresh_token FROM oauth_tokens WHERE company_id = 'dev'") == \
        [(idp.consent.grants[-1].refresh_token,)]
    for secret in idp.issued_secrets():
        assert secret not in out + err and secret not in run.log_text()
