"""The done status `skipped` (issue 23): a class `[imap] skip` keeps from the handler is recorded
with its class as the error, finishes the UID like any done status in both ledgers (and in the
cluster's fenced SQL functions), and `failed --status skipped` lists it. The done statuses live
in one place per backend: DONE_STATUSES and sql/008's idle_supervisor_done_statuses()."""
from __future__ import annotations

from pathlib import Path

import pytest

from tenant_proc.store.api import DONE_STATUSES
from tenant_proc.store.failed_ledger import ledger_for
from tenant_proc.store.sqlite import SqliteStore
from tenant_proc.store.supabase import SupabaseStore
from tests.servers.postgres.pg import PostgresDatabase
from tests.store.test_supabase import add_company
from tests.store.test_supabase_handling import store  # noqa: F401 (fixture: plain and fenced)


def _skip_then_begin(store) -> None:
    assert store.begin_attempt("acme", "INBOX", 7, 5) == (None, 0)
    store.mark_done("acme", "INBOX", 7, 5, "<bounce@x>", "skipped", "bounce")
    assert store.is_done("acme", "INBOX", 7, 5)
    # a later attempt (a crash before the checkpoint moved) leaves it as it is
    assert store.begin_attempt("acme", "INBOX", 7, 5) == ("skipped", 0)
    store.mark_done("acme", "INBOX", 7, 5, "<bounce@x>", "processed")  # a done row never changes
    store.mark_done("acme", "INBOX", 7, 6, "<ok@x>", "processed")
    [row] = ledger_for(store).list_failed("acme", status="skipped")
    assert (row.uid, row.message_id, row.error, row.attempts) == (5, "<bounce@x>", "bounce", 0)
    assert row.failed_at is not None
    assert ledger_for(store).list_failed("acme") == []  # `failed` lists failed rows only


def test_sqlite_ledger(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "checkpoints.sqlite3")
    try:
        _skip_then_begin(store)
        assert store.load_checkpoint("acme", "INBOX").last_uid == 6
    finally:
        store.close()


@pytest.mark.integration
def test_supabase_ledger(store: SupabaseStore, pg_db: PostgresDatabase) -> None:
    _skip_then_begin(store)  # plain and fenced (the cluster's SQL functions)
    rows = pg_db.execute("SELECT uid, status, error FROM processed_emails ORDER BY uid")
    assert rows == [(5, "skipped", "bounce"), (6, "processed", None)]
    assert pg_db.execute("SELECT last_uid FROM imap_checkpoints") == [(6,)]


@pytest.mark.integration
def test_one_list_of_done_statuses_per_backend_and_they_agree(pg_db: PostgresDatabase) -> None:
    [(statuses,)] = pg_db.execute("SELECT public.idle_supervisor_done_statuses()")
    assert tuple(statuses) == DONE_STATUSES
    add_company(pg_db, "acme")
    with pytest.raises(Exception, match="processed_emails_status_check"):
        pg_db.execute("INSERT INTO processed_emails (company_id, folder, uidvalidity, uid, status) "
                      "VALUES ('acme', 'INBOX', 1, 1, 'nonsense')")


@pytest.mark.integration
def test_the_emails_table_has_the_answering_columns(pg_db: PostgresDatabase) -> None:
    columns = dict(pg_db.execute(
        "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = 'emails'"))
    for name in ("reply_to", "in_reply_to", "references", "list_id", "auto", "from_self"):
        assert columns.get(name) == "YES", name
    company = dict(pg_db.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'companies'"))
    assert company["addresses"] == "ARRAY" and company["skip"] == "ARRAY"
