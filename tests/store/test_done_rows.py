"""Issue 22 item 8: a finished ledger row never changes again, in every backend and through every
write path: SQLite, the Supabase store's plain REST writes and its fenced SQL functions
(sql/010_ledger.sql), against a real PostgreSQL behind the PostgREST test server with the
real supabase-py client.

The case that reopened one: a `processed` row whose checkpoint write timed out (so the UID is
fetched again) and a FETCH of that UID the server refuses. The failure was counted on the done
row, turning it back into `retrying`, and the next attempt handed the email over as new.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from tenant_proc.spec import Secret, StateSpec
from tenant_proc.store.api import DONE_STATUSES, Checkpoint
from tenant_proc.store.failed_ledger import ledger_for
from tenant_proc.store.sqlite import SqliteStore
from tenant_proc.store.supabase import SupabaseStore
from tests.harness.faultlib import wait_until
from tests.process.test_tenant_process import jsonl_lines, make_spec, tenants, wait_lines  # noqa: F401 (fixture)
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message
from tests.servers.postgres.pg import PostgresDatabase
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY, PostgrestServer
from tests.servers.proxies.fault_proxy import FaultProxy
from tests.store.test_supabase import add_company

pytestmark = pytest.mark.integration

UV, UID = 7, 5
# Every status the ledger knows: the done ones and those of an email still under way.
ALL_STATUSES = sorted({*DONE_STATUSES, "retrying", "handling", "replay"})


class Ledger:
    """One backend under test, and a way to read its row for UID as it is stored."""

    def __init__(self, store: Any, read: Any) -> None:
        self.store = store
        self.read = read

    def row(self) -> tuple:
        rows = self.read()
        assert len(rows) == 1, rows
        return rows[0]


@pytest.fixture(params=["sqlite", "supabase-rest", "supabase-fenced"])
def ledger(request, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        store: Any = SqliteStore(tmp_path / "c.sqlite3")
        read = lambda: store._db.execute(  # noqa: E731
            "SELECT status, attempts, message_id, error, updated_at FROM ledger").fetchall()
    else:
        pg_db: PostgresDatabase = request.getfixturevalue("pg_db")
        postgrest: PostgrestServer = request.getfixturevalue("postgrest")
        add_company(pg_db, "acme")
        token = None
        if request.param == "supabase-fenced":
            ((_, token),) = pg_db.execute("SELECT * FROM claim_companies('me', 30, 1)")
        store = SupabaseStore(postgrest.url, TEST_SERVICE_KEY, fencing_token=token)
        read = lambda: pg_db.execute(  # noqa: E731
            "SELECT status, attempts, message_id, error, processed_at, fencing_token "
            "FROM processed_emails")
    try:
        yield Ledger(store, read)
    finally:
        store.close()


@pytest.mark.parametrize("status", DONE_STATUSES)
def test_a_done_row_survives_every_later_write(ledger: Ledger, status: str) -> None:
    store = ledger.store
    store.record_attempt_failure("acme", "INBOX", UV, UID, "<5@x>", "the first try failed")
    store.mark_done("acme", "INBOX", UV, UID, "<5@x>", status, "why" if status == "failed" else None)
    done = ledger.row()
    assert done[:2] == (status, 1)
    # The checkpoint write after it timed out: the UID is above the checkpoint again.
    store.save_checkpoint("acme", "INBOX", Checkpoint(UV, UID - 1))

    # A refused FETCH of that UID (the mailbox counts an attempt): nothing changes, and the
    # attempts it reports are the row's own.
    assert store.record_attempt_failure("acme", "INBOX", UV, UID, None, "server refused the FETCH") == 1
    assert ledger.row() == done
    # The next attempt sees the row done: not handed over again, still unchanged.
    assert store.begin_attempt("acme", "INBOX", UV, UID) == (status, 1)
    assert store.is_done("acme", "INBOX", UV, UID)
    # Another outcome recorded late (a second process, a retry that raced): ignored.
    other = "failed" if status != "failed" else "processed"
    store.mark_done("acme", "INBOX", UV, UID, "<other@x>", other, "late")
    # A replay claim touches only rows an operator marked.
    assert ledger_for(store).claim_replays("acme", "INBOX", UV, UID) == []
    assert ledger.row() == done


def test_a_row_that_is_not_done_still_counts_and_finishes(ledger: Ledger) -> None:
    """The guard only protects done rows: the usual life of a failing email is unchanged."""
    store = ledger.store
    assert store.begin_attempt("acme", "INBOX", UV, UID) == (None, 0)
    assert store.record_attempt_failure("acme", "INBOX", UV, UID, "<5@x>", "flaky") == 1
    assert store.record_attempt_failure("acme", "INBOX", UV, UID, "<5@x>", "flaky") == 2
    assert ledger.row()[:2] == ("retrying", 2)
    store.mark_done("acme", "INBOX", UV, UID, "<5@x>", "processed")
    assert ledger.row()[:2] == ("processed", 2)


def test_the_sql_done_statuses_are_the_python_ones(pg_db: PostgresDatabase) -> None:
    """One place per backend (DONE_STATUSES, idle_supervisor_is_done): a status added to one and
    not the other fails here."""
    rows = pg_db.execute("SELECT s FROM unnest(%s::text[]) s WHERE idle_supervisor_is_done(s)",
                         (ALL_STATUSES,))
    assert {s for (s,) in rows} == set(DONE_STATUSES)
    assert pg_db.execute("SELECT idle_supervisor_is_done(NULL)") == [(False,)]


def test_fenced_mark_done_takes_only_a_done_status(pg_db: PostgresDatabase) -> None:
    add_company(pg_db, "acme")
    ((_, token),) = pg_db.execute("SELECT * FROM claim_companies('me', 30, 1)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a done status"):
        pg_db.execute("SELECT fenced_mark_done('acme', 'INBOX', 7, 5, NULL, 'retrying', NULL, %s)",
                      (token,))
    assert pg_db.execute("SELECT count(*) FROM processed_emails") == [(0,)]
    assert pg_db.execute("SELECT count(*) FROM imap_checkpoints") == [(0,)]


# ---- the whole path: a real tenant process, Dovecot behind the fault proxy --------------------

@pytest.mark.parametrize("refusals", [2, None], ids=["refused-once", "refused-always"])
@pytest.mark.parametrize("fenced", [False, True], ids=["rest", "fenced"])
def test_a_processed_email_whose_checkpoint_write_was_lost_is_not_handed_over_again(
        dovecot: Dovecot, pg_db: PostgresDatabase, postgrest: PostgrestServer, tmp_path: Path,
        tenants: Any, fenced: bool, refusals: int | None) -> None:
    """The email is processed; its checkpoint write is lost; after a restart the server refuses
    the FETCH of that UID (once, or for good). The ledger row stays `processed`, the email is not
    handed over again, and the mailbox moves past it (before: the refusal reopened the row,
    and the next FETCH handed the email over as new, or it ended `failed`)."""
    add_company(pg_db, "t-alice")
    token = None
    if fenced:
        ((_, token),) = pg_db.execute("SELECT * FROM claim_companies('me', 30, 1)")
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        spec = dataclasses.replace(
            make_spec(dovecot, tmp_path, security="plain", max_attempts=3),
            port=proxy.port, fencing_token=token,
            state=StateSpec(backend="supabase", supabase_url=postgrest.url,
                            supabase_key=Secret(TEST_SERVICE_KEY)))
        first = tenants(spec)
        first.wait_state("idle")
        dovecot.deliver("alice", make_message("once", message_id="<once@x>"))
        wait_lines(tmp_path, 1)
        wait_until(lambda: pg_db.execute("SELECT status FROM processed_emails") == [("processed",)],
                   10, "the processed row")
        assert first.stop() == 0
        done = pg_db.execute("SELECT * FROM processed_emails")
        pg_db.execute("UPDATE imap_checkpoints SET last_uid = 0")  # the write that timed out

        # The survey's prefetch of UID 1 takes the first refusal; the body FETCH the next one.
        proxy.refuse_fetch(1, times=refusals)
        second = tenants(spec)
        wait_until(lambda: pg_db.execute("SELECT last_uid FROM imap_checkpoints") == [(1,)], 15,
                   "the checkpoint past UID 1")
        dovecot.deliver("alice", make_message("after it"))
        wait_lines(tmp_path, 2)
        time.sleep(1)  # a second hand-over of UID 1 would show up now
        assert [line["subject"] for line in jsonl_lines(tmp_path)] == ["once", "after it"]
        assert pg_db.execute("SELECT * FROM processed_emails WHERE uid = 1") == done
        assert second.proc.is_alive() and proxy.fetches_hit >= 2
