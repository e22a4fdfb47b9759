"""Supabase end to end: the real supervisor (`python -m supervisor run`) with `[tenants] source =
"supabase"` and `[state] backend = "supabase"`, real Dovecot, real PostgreSQL behind the
PostgREST-compatible test server, and the real supabase-py client in every process.

Companies are rows in the database; the tests change rows, not files. TLS to Dovecot is verified
against the test CA through SSL_CERT_FILE, because a company row has no ca_file column.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.supervisor_run import SupabaseRun, process_gone_within, unique_emails
from tests.servers.imap.mail_helpers import make_message
from tests.servers.postgres.pg import PostgresDatabase
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY, PostgrestServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def add_company(db: PostgresDatabase, dovecot: Any, cid: str, name: str | None = None) -> None:
    dovecot.add_user(cid, f"{cid}-pw")
    db.execute(
        "INSERT INTO companies (id, name, imap_host, imap_port, imap_security, imap_username, "
        "imap_password) VALUES (%s, %s, '127.0.0.1', %s, 'tls', %s, %s)",
        (cid, name or f"{cid.title()} AB", dovecot.imaps_port, cid, f"{cid}-pw"))


def start(tmp_path: Path, dovecot: Any, api: PostgrestServer, **supervisor: Any) -> SupabaseRun:
    settings = {"tenant_refresh": 300, **supervisor}
    run = SupabaseRun(tmp_path, dovecot, [], supervisor=settings, api=api)
    return run.start(wait_running=False)


def wait_db(db: PostgresDatabase, query: str, expected: Any, timeout: float = 5) -> None:
    """The handler runs before the store write: poll the database, bounded, for the outcome."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and db.execute(query) != expected:
        time.sleep(0.05)
    assert db.execute(query) == expected


def assert_no_key_leaked(run: SupabaseRun) -> None:
    assert TEST_SERVICE_KEY not in run.log_text()
    assert TEST_SERVICE_KEY not in (run.state_dir / "status.json").read_text()


def test_companies_load_and_mail_is_processed_with_state_in_supabase(dovecot, pg_db, postgrest, tmp_path):
    add_company(pg_db, dovecot, "acme")
    add_company(pg_db, dovecot, "beta")
    add_company(pg_db, dovecot, "dormant")
    pg_db.execute("UPDATE companies SET active = false WHERE id = 'dormant'")
    with start(tmp_path, dovecot, postgrest) as run:
        status = run.wait_tenants({"acme", "beta"})
        assert status["tenants"]["acme"]["name"] == "Acme AB"
        dovecot.deliver("acme", make_message("for acme"))
        dovecot.deliver("beta", make_message("for beta"))
        emails = run.wait_emails(2)
        assert {e["tenant_id"]: e["subject"] for e in emails} == {"acme": "for acme", "beta": "for beta"}
        # Checkpoint and ledger live in the database, keyed by company id; nothing in SQLite.
        # mark_done writes the ledger row, then the checkpoint: wait for the later one.
        wait_db(pg_db, "SELECT company_id, last_uid FROM imap_checkpoints ORDER BY company_id",
                sorted((e["tenant_id"], e["uid"]) for e in emails))
        ledger = pg_db.execute("SELECT company_id, status FROM processed_emails ORDER BY company_id")
        assert ledger == [("acme", "processed"), ("beta", "processed")]
        assert not (run.state_dir / "checkpoints.sqlite3").exists()
        assert "HTTP Request" not in run.log_text()  # no per-request httpx chatter in the log
        assert_no_key_leaked(run)


def test_refresh_picks_up_change_addition_and_removal(dovecot, pg_db, postgrest, tmp_path):
    add_company(pg_db, dovecot, "acme")
    add_company(pg_db, dovecot, "beta")
    with start(tmp_path, dovecot, postgrest, tenant_refresh=1) as run:
        before = {t: s["pid"] for t, s in run.wait_tenants({"acme", "beta"})["tenants"].items()}
        pg_db.execute("UPDATE companies SET name = 'Acme Renamed' WHERE id = 'acme'")  # changed
        pg_db.execute("UPDATE companies SET active = false WHERE id = 'beta'")  # removed
        add_company(pg_db, dovecot, "gamma")  # added
        status = run.wait_for(lambda s: set(s["tenants"]) == {"acme", "gamma"}
                              and s["tenants"]["acme"]["name"] == "Acme Renamed"
                              and all(t["state"] == "idle" for t in s["tenants"].values()),
                              20, "refresh applied")
        assert status["tenants"]["acme"]["pid"] != before["acme"]
        assert not process_gone_within([before["beta"], before["acme"]], 5)
        dovecot.deliver("gamma", make_message("to gamma"))
        assert run.wait_emails(1, tenant="gamma")[0]["subject"] == "to gamma"
        # An unchanged row keeps its process across later refreshes.
        gamma_pid = status["tenants"]["gamma"]["pid"]
        time.sleep(2.5)
        assert run.child_pids()["gamma"] == gamma_pid
        assert_no_key_leaked(run)


def test_sighup_picks_up_changes_without_waiting_for_refresh(dovecot, pg_db, postgrest, tmp_path):
    add_company(pg_db, dovecot, "acme")
    add_company(pg_db, dovecot, "beta")
    with start(tmp_path, dovecot, postgrest) as run:  # tenant_refresh = 300 s
        before = {t: s["pid"] for t, s in run.wait_tenants({"acme", "beta"})["tenants"].items()}
        pg_db.execute("DELETE FROM companies WHERE id = 'beta'")
        add_company(pg_db, dovecot, "gamma")
        time.sleep(1)
        assert set(run.status()["tenants"]) == {"acme", "beta"}  # nothing happens on its own
        run.signal(signal.SIGHUP)
        status = run.wait_tenants({"acme", "gamma"})
        assert status["tenants"]["acme"]["pid"] == before["acme"]  # unchanged: same process
        assert not process_gone_within([before["beta"]], 5)


def test_supabase_down_at_start_then_tenants_arrive(dovecot, pg_db, postgrest, tmp_path):
    add_company(pg_db, dovecot, "acme")
    postgrest.go_down()
    with start(tmp_path, dovecot, postgrest, tenant_refresh=1) as run:
        run.wait_for(lambda s: "supervisor" in s and s["tenants"] == {}, 10, "running with no tenants")
        deadline = time.monotonic() + 10
        while "tenants not refreshed" not in run.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        line = next(l for l in run.log_text().splitlines() if "tenants not refreshed" in l)
        assert "cannot connect" in line and postgrest.url in line
        assert run.proc is not None and run.proc.poll() is None  # still running
        postgrest.come_up()
        run.wait_tenants({"acme"})
        dovecot.deliver("acme", make_message("after outage"))
        assert run.wait_emails(1)[0]["subject"] == "after outage"
        assert_no_key_leaked(run)


@pytest.mark.parametrize("outage", ["down", "erroring"])
def test_supabase_outage_mid_run_keeps_tenants_and_loses_no_mail(dovecot, pg_db, postgrest, tmp_path, outage):
    add_company(pg_db, dovecot, "acme")
    with start(tmp_path, dovecot, postgrest, tenant_refresh=1) as run:
        pids = {t: s["pid"] for t, s in run.wait_tenants({"acme"})["tenants"].items()}
        if outage == "down":
            postgrest.go_down()
        else:
            postgrest.fail_with(503)
        dovecot.deliver("acme", make_message("during outage"))
        time.sleep(3)  # several refresh rounds fail
        assert run.child_pids() == pids  # the tenant was not stopped for lack of a company list
        assert run.log_text().count("tenants not refreshed") >= 2
        if outage == "down":
            postgrest.come_up()
        else:
            postgrest.fail_with(None)
        dovecot.deliver("acme", make_message("after outage"))
        run.wait_for(lambda s: s["tenants"]["acme"]["processed"] >= 2, 30, "both emails recorded")
        subjects = {e["subject"] for e in run.emails()}
        assert subjects == {"during outage", "after outage"}
        done = pg_db.execute("SELECT count(*) FROM processed_emails WHERE status = 'processed'")
        assert done == [(2,)]
        assert run.child_pids() == pids
        assert_no_key_leaked(run)


def test_checkpoint_survives_a_full_restart_with_a_fresh_state_dir(dovecot, pg_db, postgrest, tmp_path):
    add_company(pg_db, dovecot, "acme")
    with start(tmp_path / "first", dovecot, postgrest) as run:
        run.wait_tenants({"acme"})
        dovecot.deliver("acme", make_message("one"))
        dovecot.deliver("acme", make_message("two"))
        run.wait_for(lambda s: s["tenants"]["acme"]["processed"] >= 2, 15, "two processed")
        assert run.stop() == 0
    # A redeploy: new container, empty state_dir. Mail arrives while nothing runs.
    dovecot.deliver("acme", make_message("three"))
    dovecot.deliver("acme", make_message("four"))
    with start(tmp_path / "second", dovecot, postgrest) as run:
        assert not run.state_dir.exists() or not any(run.state_dir.glob("*.sqlite3"))
        run.wait_tenants({"acme"})
        emails = run.wait_emails(2)
        time.sleep(1.5)  # anything older would have been fetched by now
        assert sorted(e["subject"] for e in run.emails()) == ["four", "three"]
    statuses = pg_db.execute("SELECT status, count(*) FROM processed_emails GROUP BY status")
    assert statuses == [("processed", 4)]
    assert pg_db.execute("SELECT last_uid FROM imap_checkpoints") == [(max(e["uid"] for e in emails),)]


def test_no_duplicates_across_a_child_crash(dovecot, pg_db, postgrest, tmp_path):
    add_company(pg_db, dovecot, "acme")
    with start(tmp_path, dovecot, postgrest, restart_backoff=1) as run:
        run.wait_tenants({"acme"})
        for i in range(3):
            dovecot.deliver("acme", make_message(f"before {i}"))
        run.wait_for(lambda s: s["tenants"]["acme"]["processed"] >= 3, 15, "three processed")
        old_pid = run.child_pids()["acme"]
        os.kill(old_pid, signal.SIGKILL)
        for i in range(3):
            dovecot.deliver("acme", make_message(f"while down {i}"))
        run.wait_for(lambda s: s["tenants"]["acme"]["pid"] not in (None, old_pid)
                     and s["tenants"]["acme"]["state"] == "idle", 15, "restarted")
        run.wait_emails(6)
        time.sleep(1.5)
        emails = run.emails()
        assert len(emails) == len(unique_emails(emails)) == 6
        assert sorted(e["subject"] for e in emails) == sorted(
            [f"before {i}" for i in range(3)] + [f"while down {i}" for i in range(3)])
        wait_db(pg_db, "SELECT count(*) FROM processed_emails WHERE status = 'processed'", [(6,)])
