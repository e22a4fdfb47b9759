"""Issue 12 item 8 against a real PostgreSQL (PostgREST test server, real supabase-py): ledger
text without NUL and bounded in every store write, and the Supabase store's 'handling' mark
(plain and fenced), so a failed write after the handler ran never hands the email over unmarked.
The end-to-end run with the real supervisor is in tests/mail/test_faults_mail_e2e.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from tenant_proc.store.api import MAX_LEDGER_TEXT, LeaseLost
from tenant_proc.store.sqlite import SqliteStore
from tenant_proc.store.supabase import SupabaseStore
from tests.servers.postgres.pg import PostgresDatabase
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY, PostgrestServer
from tests.store.test_supabase import add_company

pytestmark = pytest.mark.integration

HUGE_ID = "<" + "m" * 100_000 + "@x>"


@pytest.fixture(params=["plain", "fenced"])
def store(request, postgrest: PostgrestServer, pg_db: PostgresDatabase):
    add_company(pg_db, "acme")
    token = None
    if request.param == "fenced":
        ((_, token),) = pg_db.execute("SELECT * FROM claim_companies('me', 30, 1)")
    s = SupabaseStore(postgrest.url, TEST_SERVICE_KEY, fencing_token=token)
    yield s
    s.close()


def test_nul_and_huge_text_are_stored_not_refused(store: SupabaseStore, pg_db: PostgresDatabase) -> None:
    assert store.record_attempt_failure("acme", "INBOX", 7, 4, "<a\x00b@x>", "boom\x00" + "e" * 50_000) == 1
    store.mark_done("acme", "INBOX", 7, 4, "<a\x00b@x>", "failed", "gave up\x00")
    store.mark_done("acme", "INBOX", 7, 5, HUGE_ID, "processed")
    rows = pg_db.execute("SELECT uid, message_id, status, error FROM processed_emails ORDER BY uid")
    assert rows[0] == (4, "<ab@x>", "failed", "gave up")
    assert rows[1][2] == "processed" and len(rows[1][1]) <= MAX_LEDGER_TEXT + 1
    assert rows[1][1].startswith("<mmmm")


def test_handling_mark_counts_a_lost_attempt_and_keeps_done_rows(store: SupabaseStore,
                                                                pg_db: PostgresDatabase) -> None:
    assert store.begin_attempt("acme", "INBOX", 7, 5) == (None, 0)
    assert pg_db.execute("SELECT status, attempts FROM processed_emails") == [("handling", 0)]
    # The handler ran, the outcome was never recorded (a refused write, a SIGKILL): the next
    # attempt sees it and counts it.
    assert store.begin_attempt("acme", "INBOX", 7, 5) == ("handling", 1)
    assert store.begin_attempt("acme", "INBOX", 7, 5) == ("handling", 2)
    # A handler failure is counted and leaves the row 'retrying', not 'handling'.
    assert store.record_attempt_failure("acme", "INBOX", 7, 5, "<5@x>", "flaky") == 3
    assert pg_db.execute("SELECT status FROM processed_emails") == [("retrying",)]
    assert store.begin_attempt("acme", "INBOX", 7, 5) == ("retrying", 3)
    store.mark_done("acme", "INBOX", 7, 5, "<5@x>", "processed")  # finishes a 'handling' row
    assert pg_db.execute("SELECT status, attempts FROM processed_emails") == [("processed", 3)]
    assert store.is_done("acme", "INBOX", 7, 5)
    assert store.begin_attempt("acme", "INBOX", 7, 5) == ("processed", 3)
    assert pg_db.execute("SELECT status FROM processed_emails") == [("processed",)]


def test_fenced_handling_mark_is_refused_on_an_expired_lease(postgrest: PostgrestServer,
                                                             pg_db: PostgresDatabase) -> None:
    add_company(pg_db, "acme")
    ((_, token),) = pg_db.execute("SELECT * FROM claim_companies('me', 30, 1)")
    store = SupabaseStore(postgrest.url, TEST_SERVICE_KEY, fencing_token=token)
    try:
        pg_db.execute("UPDATE company_leases SET expires_at = now()")
        with pytest.raises(LeaseLost, match="expired"):  # no handler starts on an expired lease
            store.begin_attempt("acme", "INBOX", 7, 5)
        assert pg_db.execute("SELECT count(*) FROM processed_emails") == [(0,)]
    finally:
        store.close()


def test_sqlite_ledger_text_is_clean_and_bounded(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.sqlite3")
    store.record_attempt_failure("acme", "INBOX", 7, 4, "<a\x00b@x>", "e\x00" * 10_000)
    store.mark_done("acme", "INBOX", 7, 5, HUGE_ID, "processed")
    rows = store._db.execute("SELECT message_id, error FROM ledger ORDER BY uid").fetchall()
    store.close()
    assert rows[0][0] == "<ab@x>" and "\x00" not in rows[0][1] and len(rows[0][1]) <= MAX_LEDGER_TEXT + 1
    assert len(rows[1][0]) <= MAX_LEDGER_TEXT + 1


def test_a_database_without_the_migration_still_handles_mail(postgrest: PostgrestServer,
                                                             pg_db: PostgresDatabase, caplog) -> None:
    """Deployed before running sql/006: one warning, then is_done() as before, never a stop."""
    add_company(pg_db, "acme")
    ((_, token),) = pg_db.execute("SELECT * FROM claim_companies('me', 30, 1)")
    pg_db.execute("DROP FUNCTION fenced_begin_attempt(text, text, bigint, bigint, bigint)")
    store = SupabaseStore(postgrest.url, TEST_SERVICE_KEY, fencing_token=token)
    try:
        assert store.begin_attempt("acme", "INBOX", 7, 5) == (None, 0)
        assert "sql/006_faults_mail.sql" in caplog.text
        store.mark_done("acme", "INBOX", 7, 5, "<5@x>", "processed")
        assert store.begin_attempt("acme", "INBOX", 7, 5) == ("processed", 0)
    finally:
        store.close()
