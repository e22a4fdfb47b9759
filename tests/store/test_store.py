"""The SQLite checkpoint store: first start, idempotent mark_done, forward only, durable attempts."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tenant_proc.spec import Secret, StateSpec, TenantSpec
from tenant_proc.store.api import Checkpoint, StoreError
from tenant_proc.store.backend import open_store
from tenant_proc.store.sqlite import SqliteStore


def _store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "state" / "checkpoints.sqlite3")


def test_first_start_has_no_checkpoint_and_private_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.load_checkpoint("acme", "INBOX") is None
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "checkpoints.sqlite3").stat().st_mode) == 0o600
    store.save_checkpoint("acme", "INBOX", Checkpoint(9, 41))
    assert store.load_checkpoint("acme", "INBOX") == Checkpoint(9, 41)
    assert store.load_checkpoint("acme", "Other") is None
    assert store.load_checkpoint("other", "INBOX") is None


def test_mark_done_is_idempotent_and_forward_only(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.save_checkpoint("acme", "INBOX", Checkpoint(9, 0))
    store.mark_done("acme", "INBOX", 9, 5, "<m5>", "processed")
    store.mark_done("acme", "INBOX", 9, 5, "<m5>", "processed")
    assert store.load_checkpoint("acme", "INBOX") == Checkpoint(9, 5)
    assert store.is_done("acme", "INBOX", 9, 5)
    store.mark_done("acme", "INBOX", 9, 3, "<m3>", "processed")  # late, lower UID
    assert store.load_checkpoint("acme", "INBOX") == Checkpoint(9, 5)
    store.mark_done("acme", "INBOX", 9, 5, "<m5>", "failed", "late")  # done stays done
    row = store._db.execute("SELECT status, error FROM ledger WHERE uid = 5").fetchone()
    assert row == ("processed", None)
    store.mark_done("acme", "INBOX", 8, 99, None, "processed")  # stale UIDVALIDITY never moves it
    assert store.load_checkpoint("acme", "INBOX") == Checkpoint(9, 5)


def test_attempts_survive_reopen(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.record_attempt_failure("acme", "INBOX", 9, 7, "<m7>", "ValueError: a") == 1
    assert store.record_attempt_failure("acme", "INBOX", 9, 7, "<m7>", "ValueError: b") == 2
    assert not store.is_done("acme", "INBOX", 9, 7)
    store.close()
    store = _store(tmp_path)
    assert store.record_attempt_failure("acme", "INBOX", 9, 7, "<m7>", "ValueError: c") == 3
    store.mark_done("acme", "INBOX", 9, 7, "<m7>", "failed", "ValueError: c")
    assert store.is_done("acme", "INBOX", 9, 7)
    row = store._db.execute("SELECT status, attempts, error FROM ledger WHERE uid = 7").fetchone()
    assert row == ("failed", 3, "ValueError: c")


def test_two_connections_share_the_file(tmp_path: Path) -> None:
    a, b = _store(tmp_path), _store(tmp_path)
    a.mark_done("acme", "INBOX", 1, 1, None, "processed")
    b.mark_done("beta", "INBOX", 1, 2, None, "processed")
    assert a.load_checkpoint("beta", "INBOX") == Checkpoint(1, 2)
    assert b._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_open_store_uses_state_dir(tmp_path: Path) -> None:
    spec = TenantSpec(
        id="acme", name="Acme", host="127.0.0.1", port=993, security="tls", username="u",
        password=Secret("pw"), state=StateSpec(state_dir=str(tmp_path / "s")),
    )
    store = open_store(spec)
    store.save_checkpoint("acme", "INBOX", Checkpoint(1, 1))
    assert (tmp_path / "s" / "checkpoints.sqlite3").exists()


def test_finish_then_begin_writes_both_rows_in_one_transaction(tmp_path: Path) -> None:
    """The burst path: email 1's processed row and email 2's handling mark in one commit, with
    begin_attempt's semantics for the second (a previous 'handling' is a death, counted)."""
    store = _store(tmp_path)
    assert store.begin_attempt("acme", "INBOX", 9, 1) == (None, 0)
    assert store.finish_then_begin("acme", "INBOX", 9, (1, "<m1>", "processed"), 2) == (None, 0)
    assert store.is_done("acme", "INBOX", 9, 1)
    assert store.load_checkpoint("acme", "INBOX") == Checkpoint(9, 1)
    status = "SELECT status, attempts FROM ledger WHERE uid = ?"
    assert store._db.execute(status, (2,)).fetchone() == ("handling", 0)
    store.close()  # the process died in email 2's handler
    store = _store(tmp_path)
    assert store.begin_attempt("acme", "INBOX", 9, 2) == ("handling", 1)
    # A done UID stays done and comes back as such.
    assert store.finish_then_begin("acme", "INBOX", 9, (2, "<m2>", "processed"), 1) == ("processed", 0)
    assert store._db.execute(status, (2,)).fetchone() == ("processed", 1)


def test_finish_then_begin_is_all_or_nothing(tmp_path: Path) -> None:
    """If the mark cannot be written, the finished row is not either: the caller still holds
    it and the email stays 'handling' (redelivered after a crash, never lost)."""
    store = _store(tmp_path)
    store.begin_attempt("acme", "INBOX", 9, 1)
    store._db.execute("CREATE TRIGGER no_three BEFORE INSERT ON ledger WHEN NEW.uid = 3 "
                      "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(StoreError):
        store.finish_then_begin("acme", "INBOX", 9, (1, "<m1>", "processed"), 3)
    assert not store.is_done("acme", "INBOX", 9, 1)
    assert store.load_checkpoint("acme", "INBOX") is None
