"""A `companies` row is not the operator: unless `[tenants] trust_rows = true`, a row that names
an environment variable, a program or a file of the host is refused for that company alone, with
one line naming the company and the key, and the other companies run (supervisor/tenants/row_trust.py).

Before: `oauth.client_secret_env = "SUPABASE_SERVICE_ROLE_KEY"` with the row's own `token_url`
had the service key POSTed there, and `provider = "command"` ran any argv on the host.
"""
from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from supervisor.config.load import load_config
from supervisor.errors import ConfigError
from supervisor.tenants.rows import build_tenant_specs
from tests.harness.supervisor_run import SupabaseRun
from tests.servers.imap.mail_helpers import make_message
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY
from tests.servers.webhook_receiver import WebhookReceiver

ROW = {"id": "acme", "name": "Acme AB", "host": "127.0.0.1", "username": "u", "password": "pw"}
MICROSOFT = {"provider": "microsoft", "tenant": "contoso.example", "client_id": "app"}


def _config(tmp_path: Path, tenants: str = "") -> Any:
    path = tmp_path / "config.toml"
    path.write_text(f'[supervisor]\nstate_dir = "state"\n[tenants]\nsource = "file"\n{tenants}')
    return load_config(path, environ={})


@pytest.mark.parametrize("row, key", [
    ({**ROW, "auth": "xoauth2", "oauth": {**MICROSOFT, "client_secret_env": "SUPABASE_SERVICE_ROLE_KEY"}},
     "oauth.client_secret_env: a companies row may not name an environment variable"),
    ({**ROW, "auth": "xoauth2", "oauth": {**MICROSOFT, "client_secret": "s", "refresh_token_env": "X"}},
     "oauth.refresh_token_env: a companies row may not name an environment variable"),
    ({**ROW, "auth": "xoauth2", "oauth": {"provider": "command", "command": ["/bin/true"]}},
     'oauth.provider: a companies row may not name a program ("command")'),
    ({**ROW, "auth": "xoauth2", "oauth": {**MICROSOFT, "certificate_file": "/etc/app.pem"}},
     "oauth.certificate_file: a companies row may not name a file"),
    ({**ROW, "auth": "xoauth2", "oauth": {"provider": "google", "flow": "service_account",
                                          "service_account_file": "/etc/sa.json"}},
     "oauth.service_account_file: a companies row may not name a file"),
    ({**ROW, "auth": "xoauth2", "oauth": {**MICROSOFT, "client_secret": "s", "token_ca_file": "/etc/ca"}},
     "oauth.token_ca_file: a companies row may not name a file"),
    ({**ROW, "password_env": "SUPABASE_SERVICE_ROLE_KEY"},
     "password_env: a companies row may not name an environment variable"),
    ({**ROW, "ca_file": "/etc/ssl/private/key.pem"}, "ca_file: a companies row may not name a file"),
])
def test_an_untrusted_row_naming_the_host_is_refused_alone(tmp_path, row, key):
    environ = {"SUPABASE_SERVICE_ROLE_KEY": "the-service-key", "X": "x"}
    load = build_tenant_specs(_config(tmp_path), [row, {**ROW, "id": "beta"}], environ, trusted=False)
    assert set(load.specs) == {"beta"}
    name, reason = load.errors["acme"]
    assert name == "Acme AB" and reason.startswith(key) and "[tenants] trust_rows = true" in reason
    assert "the-service-key" not in reason


def test_values_in_a_row_are_fine_and_trust_rows_allows_the_rest(tmp_path):
    values = {**ROW, "auth": "xoauth2", "oauth": {**MICROSOFT, "client_secret": "from-the-row",
                                                   "token_url": "https://login.example/token"}}
    naming = {**ROW, "id": "named", "auth": "xoauth2",
              "oauth": {**MICROSOFT, "client_secret_env": "APP_SECRET"}}
    environ = {"APP_SECRET": "from-the-host"}
    untrusted = build_tenant_specs(_config(tmp_path), [values, naming], environ, trusted=False)
    assert set(untrusted.specs) == {"acme"} and set(untrusted.errors) == {"named"}
    trusted = build_tenant_specs(_config(tmp_path), [values, naming], environ, trusted=True)
    assert trusted.specs["named"].oauth.client_secret.reveal() == "from-the-host"


def test_trust_rows_is_off_by_default_and_read_strictly(tmp_path, monkeypatch):
    assert _config(tmp_path).tenants.trust_rows is False
    assert _config(tmp_path, "trust_rows = true\n").tenants.trust_rows is True
    path = tmp_path / "config.toml"
    assert load_config(path, environ={"IDLE_SUPERVISOR_TENANTS_TRUST_ROWS": "true"}).tenants.trust_rows
    with pytest.raises(ConfigError, match="trust_rows must be true or false"):
        load_config(path, environ={"IDLE_SUPERVISOR_TENANTS_TRUST_ROWS": "yes"})


def _insert_oauth_company(db: Any, dovecot: Any, cid: str, oauth: dict[str, Any]) -> None:
    db.execute(
        "INSERT INTO companies (id, name, imap_host, imap_port, imap_security, imap_username, "
        "imap_auth, oauth) VALUES (%s, %s, '127.0.0.1', %s, 'tls', %s, 'xoauth2', %s)",
        (cid, f"{cid.title()} AB", dovecot.imaps_port, cid, json.dumps(oauth)))


@pytest.mark.integration
@pytest.mark.slow
def test_rows_cannot_read_the_service_key_or_run_programs(oauth_dovecot, pg_db, postgrest, tmp_path):
    dovecot = oauth_dovecot  # offers XOAUTH2, so the command row would get as far as its program
    dovecot.add_user("acme", "acme-pw")
    pg_db.execute("INSERT INTO companies (id, name, imap_host, imap_port, imap_security, imap_username, "
                  "imap_password) VALUES ('acme', 'Acme AB', '127.0.0.1', %s, 'tls', 'acme', 'acme-pw')",
                  (dovecot.imaps_port,))
    marker = tmp_path / "the-row-ran-a-program"
    with WebhookReceiver("unused") as thief:
        _insert_oauth_company(pg_db, dovecot, "leaky", {
            **MICROSOFT, "client_secret_env": "SUPABASE_SERVICE_ROLE_KEY", "token_url": thief.url})
        _insert_oauth_company(pg_db, dovecot, "runner", {
            "provider": "command", "command": ["/bin/sh", "-c", f"touch {marker}; echo token"]})
        run = SupabaseRun(tmp_path / "run", dovecot, [], api=postgrest)
        with run.start(wait_running=False):
            run.wait_for(lambda s: s["tenants"]["acme"]["state"] == "idle"
                         and s["tenants"]["leaky"]["state"] == "failed"
                         and (s["tenants"]["runner"]["state"] == "failed" or marker.exists()),
                         30, "acme idle, the two rows refused")
            sent = [urllib.parse.unquote_plus(r.body.decode(errors="replace")) for r in thief.requests()]
            assert not any(TEST_SERVICE_KEY in body for body in sent), "the service key left the host"
            assert thief.requests() == [] and not marker.exists()
            dovecot.deliver("acme", make_message("the others keep running"))
            assert [e["subject"] for e in run.wait_emails(1)] == ["the others keep running"]
            log = run.log_text()
            assert ("[Leaky AB] not started: oauth.client_secret_env: a companies row may not name "
                    "an environment variable") in log
            assert '[Runner AB] not started: oauth.provider: a companies row may not name a program' in log
            assert "oauth.client_secret_env" in run.tenant("leaky")["last_error"]
        assert thief.requests() == [] and not marker.exists()
        # The operator may allow it: then the row's program runs.
        pg_db.execute("DELETE FROM companies WHERE id = 'leaky'")
        trusting = SupabaseRun(tmp_path / "trusting", dovecot, [], api=postgrest,
                               extra_sections={"tenants": {"source": "supabase", "trust_rows": True}})
        with trusting.start(wait_running=False):
            trusting.wait_for(lambda s: marker.exists(), 30, "the trusted row's program run")
