"""`idle-supervisor failed` and `retry` (issue 13): emails the webhook handler gave up on, listed
and replayed with the supervisor running and stopped, on the SQLite ledger and the Supabase one."""
from __future__ import annotations

import json
import time

import pytest

from tests.handlers.test_webhook import (
    SECRET,
    _run,
    _successes,
    _wait_ledger,
    receiver,  # noqa: F401 (fixture)
)
from tests.servers.imap.mail_helpers import make_message
from tests.servers.webhook_receiver import Reply


@pytest.mark.integration
def test_400_fails_at_once_then_retry_with_the_supervisor_running_delivers_once(dovecot, tmp_path, receiver):
    receiver.default = Reply(400, b'{"error": "schema mismatch"}')
    with _run(tmp_path, dovecot, receiver).start() as run:
        dovecot.deliver("acme", make_message("poison", message_id="<poison@x>"))
        uid = receiver.wait_requests(1)[0].document["uid"]
        status, attempts, error = _wait_ledger(run, uid, "failed")
        assert attempts == 1 and "HTTP 400" in error and "schema mismatch" in error
        assert len(receiver.requests()) == 1  # not retried: failed at once
        run.wait_for(lambda s: s["tenants"]["acme"]["failed_in_ledger"] == 1, 15, "failed count")
        assert " 1 " in run.cli("status").stdout.splitlines()[-1]

        listed = run.cli("failed", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert row["tenant_id"] == "acme" and row["uid"] == uid and row["message_id"] == "<poison@x>"
        assert set(row) >= {"folder", "uidvalidity", "attempts", "error", "failed_at"}
        assert "<poison@x>" in run.cli("failed", "--tenant", "acme").stdout

        receiver.default = Reply(200)  # the receiver is fixed
        retried = run.cli("retry", "acme", "--all")
        assert retried.returncode == 0 and "SIGHUP" in retried.stdout, retried.stderr
        _wait_ledger(run, uid, "processed")
        run.wait_for(lambda s: s["tenants"]["acme"]["failed_in_ledger"] == 0, 15, "failed count 0")
        time.sleep(1.5)
        assert [d["uid"] for d in _successes(receiver)] == [uid]  # delivered once
        assert json.loads(run.cli("failed", "--json").stdout) == []
        assert run.tenant("acme")["restarts"] == 0


@pytest.mark.integration
def test_retry_with_the_supervisor_stopped_is_picked_up_at_the_next_start(dovecot, tmp_path, receiver):
    receiver.default = Reply(422)
    run = _run(tmp_path, dovecot, receiver)
    with run.start():
        dovecot.deliver("acme", make_message("poison"))
        dovecot.deliver("acme", make_message("fine later"))
        uids = sorted({r.document["uid"] for r in receiver.wait_requests(2)})
        for uid in uids:
            _wait_ledger(run, uid, "failed")
    assert run.stop() == 0
    unknown = run.cli("retry", "acme", str(uids[0]), "999999")
    assert unknown.returncode == 1 and "999999" in unknown.stderr
    assert "not running" in unknown.stdout
    assert run.cli("retry", "acme", str(uids[1])).returncode == 0
    receiver.default = Reply(200)
    with run.start():
        for uid in uids:
            _wait_ledger(run, uid, "processed")
        time.sleep(1.5)
        assert [d["uid"] for d in _successes(receiver)] == uids  # oldest first, once each


# ---- Supabase ledger (and the per-company webhook_url column) -------------------------------

@pytest.mark.integration
@pytest.mark.slow
def test_failed_and_retry_on_the_supabase_ledger_with_a_company_webhook_url(
        dovecot, pg_db, postgrest, tmp_path, receiver):
    from tests.harness.supervisor_run import SupabaseRun

    dovecot.add_user("acme", "acme-pw")
    pg_db.execute(
        "INSERT INTO companies (id, name, imap_host, imap_port, imap_security, imap_username, "
        "imap_password, webhook_url) VALUES ('acme', 'Acme AB', '127.0.0.1', %s, 'tls', 'acme', "
        "'acme-pw', %s)", (dovecot.imaps_port, receiver.url))
    receiver.default = Reply(400, b"no such customer")
    # The [handler] url leads nowhere: only the company's webhook_url can receive anything.
    handler = {"target": "tenant_proc.handlers:webhook", "url": "http://127.0.0.1:9/nowhere",
               "secret_env": "WEBHOOK_SECRET", "timeout": 2}
    run = SupabaseRun(tmp_path / "run", dovecot, [], handler=handler, api=postgrest,
                      supervisor={"tenant_refresh": 300}, extra_env={"WEBHOOK_SECRET": SECRET})
    with run.start(wait_running=False):
        run.wait_tenants({"acme"})
        dovecot.deliver("acme", make_message("poison", message_id="<sb-poison@x>"))
        uid = receiver.wait_requests(1)[0].document["uid"]
        deadline = time.monotonic() + 30
        listed: list = []
        while not listed and time.monotonic() < deadline:
            out = run.cli("failed", "--json")
            assert out.returncode == 0, out.stderr
            listed = json.loads(out.stdout)
            time.sleep(0.2)
        [row] = listed
        assert row["uid"] == uid and row["message_id"] == "<sb-poison@x>" and "HTTP 400" in row["error"]
        assert row["attempts"] == 1 and row["failed_at"]
        run.wait_for(lambda s: s["tenants"]["acme"]["failed_in_ledger"] == 1, 15, "failed count")

        receiver.default = Reply(200)
        out = run.cli("retry", "acme", str(uid))
        assert out.returncode == 0 and "SIGHUP" in out.stdout, out.stderr
        deadline = time.monotonic() + 30
        while not _successes(receiver) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [d["uid"] for d in _successes(receiver)] == [uid]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and pg_db.execute(
                "SELECT status FROM processed_emails WHERE uid = %s", (uid,)) != [("processed",)]:
            time.sleep(0.1)
        assert pg_db.execute("SELECT status FROM processed_emails WHERE uid = %s", (uid,)) == [("processed",)]
        assert json.loads(run.cli("failed", "--json").stdout) == []
        time.sleep(1)
        assert len(_successes(receiver)) == 1
