"""Checkpoints and the processed/failed ledger in SQLite, shared by every tenant process.

Many processes write the same file, so: WAL (readers never block the writer), a 5 s busy
timeout, and short transactions. The connection is opened inside the tenant process, after the
fork, never inherited.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

from tenant_proc.private_files import UnsafePath, private_sqlite_file, secure_dir
from tenant_proc.store.api import (
    DONE_STATUSES,
    Checkpoint,
    StoreError,
    UnsafeStateFile,
    ledger_text,
)
from tenant_proc.store.missing_uids import MISSING_SCHEMA, SqliteMissingUids

DB_NAME = "checkpoints.sqlite3"
WAL_SWITCH_DEADLINE = 5.0  # seconds, as the busy timeout
WAL_SWITCH_RETRY_PAUSE = 0.02

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    tenant_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    last_uid INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, folder)
);
CREATE TABLE IF NOT EXISTS ledger (
    tenant_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    message_id TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, folder, uidvalidity, uid)
);
CREATE INDEX IF NOT EXISTS ledger_message_id ON ledger (tenant_id, message_id);
CREATE TABLE IF NOT EXISTS reprocess (
    tenant_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    until_uid INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, folder)
);
"""

# Only statuses that finish a UID are "done"; "retrying" rows just count attempts, and a
# "handling" row says a handler was called and has not returned (yet, or ever: a crash).
# "expunged": gone from the mailbox before it could be fetched (confirmed by UID SEARCH);
# "duplicate": its Message-ID was handled already (dedupe window, UIDVALIDITY reprocessing).
_DONE_SQL = ", ".join(f"'{s}'" for s in DONE_STATUSES)
_INSERT_HANDLING = ("INSERT INTO ledger VALUES (?, ?, ?, ?, NULL, 'handling', 0, NULL, ?) "
                    "ON CONFLICT (tenant_id, folder, uidvalidity, uid) DO NOTHING")
T = TypeVar("T")


class SqliteStore(SqliteMissingUids):
    def __init__(self, path: Path) -> None:
        prepare_file(path)
        try:
            # isolation_level=None: we write BEGIN/COMMIT ourselves so each call is one transaction.
            self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
            _enable_wal(self._db)
            self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL is durable across crashes of a process
            self._db.executescript(SCHEMA + MISSING_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from None

    def load_checkpoint(self, tenant_id: str, folder: str) -> Checkpoint | None:
        row = self._query_one(
            "SELECT uidvalidity, last_uid FROM checkpoints WHERE tenant_id = ? AND folder = ?",
            (tenant_id, folder),
        )
        return Checkpoint(row[0], row[1]) if row else None

    def save_checkpoint(self, tenant_id: str, folder: str, checkpoint: Checkpoint) -> None:
        self._write(
            [
                (
                    "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, folder) "
                    "DO UPDATE SET uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid, "
                    "updated_at = excluded.updated_at",
                    (tenant_id, folder, checkpoint.uidvalidity, checkpoint.last_uid, time.time()),
                )
            ]
        )

    def mark_done(
        self,
        tenant_id: str,
        folder: str,
        uidvalidity: int,
        uid: int,
        message_id: str | None,
        status: str,
        error: str | None = None,
    ) -> None:
        self._write(self._done_statements(tenant_id, folder, uidvalidity, uid, message_id, status, error))

    @staticmethod
    def _done_statements(
        tenant_id: str, folder: str, uidvalidity: int, uid: int, message_id: str | None, status: str,
        error: str | None = None,
    ) -> list[tuple[str, tuple]]:
        now = time.time()
        message_id, error = ledger_text(message_id), ledger_text(error)
        return [
            # A row already done stays as it is: mark_done is idempotent.
            (
                "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?) "
                "ON CONFLICT (tenant_id, folder, uidvalidity, uid) DO UPDATE SET "
                "message_id = excluded.message_id, status = excluded.status, "
                "error = excluded.error, updated_at = excluded.updated_at "
                f"WHERE ledger.status NOT IN ({_DONE_SQL})",
                (tenant_id, folder, uidvalidity, uid, message_id, status, error, now),
            ),
            # Forward only, and only within the same UIDVALIDITY.
            (
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, folder) "
                "DO UPDATE SET last_uid = max(last_uid, excluded.last_uid), "
                "updated_at = excluded.updated_at "
                "WHERE checkpoints.uidvalidity = excluded.uidvalidity",
                (tenant_id, folder, uidvalidity, uid, now),
            ),
        ]

    def record_attempt_failure(
        self, tenant_id: str, folder: str, uidvalidity: int, uid: int,
        message_id: str | None, error: str,
    ) -> int:
        message_id, error = ledger_text(message_id), ledger_text(error)
        self._write(
            [
                (
                    "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, 'retrying', 1, ?, ?) "
                    "ON CONFLICT (tenant_id, folder, uidvalidity, uid) DO UPDATE SET "
                    "attempts = ledger.attempts + 1, error = excluded.error, "
                    "status = 'retrying', updated_at = excluded.updated_at "
                    f"WHERE ledger.status NOT IN ({_DONE_SQL})",
                    (tenant_id, folder, uidvalidity, uid, message_id, error, time.time()),
                )
            ]
        )
        row = self._query_one(
            "SELECT attempts FROM ledger WHERE tenant_id = ? AND folder = ? AND uidvalidity = ? "
            "AND uid = ?",
            (tenant_id, folder, uidvalidity, uid),
        )
        return int(row[0]) if row else 1

    def begin_attempt(self, tenant_id: str, folder: str, uidvalidity: int, uid: int) -> tuple[str | None, int]:
        """Note that the handler is about to run; return the UID's previous status and attempts.

        "handling" coming back means an earlier process called the handler for this UID and died
        before recording the outcome (SIGKILL, OOM, a segfault): the handler may have done its
        work, so the email is handed over as redelivered; and the death counts as a failed
        attempt, so an email that kills its process every time is given up like any poison
        email instead of crash-looping the tenant. A done UID is left as it is.

        Almost always the UID has no row yet: one autocommit INSERT then holds the write lock
        for a single statement (a hundred tenants handling mail at once queue on that lock).
        Only an existing row takes the read-then-write transaction.
        """
        try:
            inserted = self._db.execute(
                _INSERT_HANDLING, (tenant_id, folder, uidvalidity, uid, time.time())).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint store write failed: {exc}") from None
        if inserted == 1:
            return None, 0
        return self._transaction(lambda: self._begin_existing(tenant_id, folder, uidvalidity, uid))

    def finish_then_begin(
        self, tenant_id: str, folder: str, uidvalidity: int, finished: tuple[int, str | None, str],
        uid: int,
    ) -> tuple[str | None, int]:
        """mark_done(finished = (uid, message_id, status)) and begin_attempt(uid) as ONE
        transaction: a backlog then costs one commit per email instead of two (a commit that
        writes pages is ~80 us here, most of what the ledger costs per email).

        The order a crash sees is the same as two transactions: the finished row is written
        after its handler returned, and this UID's "handling" mark is durable before its
        handler runs; a crash before the commit leaves the finished UID "handling" (handed
        over again as redelivered), exactly as a crash just before a separate mark_done."""
        done_uid, message_id, status = finished

        def both() -> tuple[str | None, int]:
            for sql, params in self._done_statements(
                    tenant_id, folder, uidvalidity, done_uid, message_id, status):
                self._db.execute(sql, params)
            marked = self._db.execute(_INSERT_HANDLING, (tenant_id, folder, uidvalidity, uid, time.time()))
            if marked.rowcount == 1:
                return None, 0
            return self._begin_existing(tenant_id, folder, uidvalidity, uid)

        return self._transaction(both)

    def _begin_existing(
        self, tenant_id: str, folder: str, uidvalidity: int, uid: int
    ) -> tuple[str | None, int]:
        """Inside a write transaction: the UID has a row; mark it handling unless it is done."""
        row = self._db.execute(
            "SELECT status, attempts FROM ledger WHERE tenant_id = ? AND folder = ? "
            "AND uidvalidity = ? AND uid = ?", (tenant_id, folder, uidvalidity, uid),
        ).fetchone()
        status, attempts = row if row else (None, 0)
        if status == "handling":
            attempts += 1
        if status not in DONE_STATUSES:
            self._db.execute(
                "INSERT INTO ledger VALUES (?, ?, ?, ?, NULL, 'handling', 0, NULL, ?) "
                "ON CONFLICT (tenant_id, folder, uidvalidity, uid) DO UPDATE SET "
                "status = 'handling', attempts = ?, updated_at = excluded.updated_at",
                (tenant_id, folder, uidvalidity, uid, time.time(), attempts),
            )
        return status, attempts

    def is_done(self, tenant_id: str, folder: str, uidvalidity: int, uid: int) -> bool:
        row = self._query_one(
            "SELECT status FROM ledger WHERE tenant_id = ? AND folder = ? AND uidvalidity = ? "
            "AND uid = ?",
            (tenant_id, folder, uidvalidity, uid),
        )
        return bool(row) and row[0] in DONE_STATUSES

    # -- Message-ID deduplication and UIDVALIDITY changes (optional StateStore methods) -----

    def handled_message_id(
        self, tenant_id: str, message_id: str, since: float | None = None,
        not_uidvalidity: int | None = None,
    ) -> bool:
        """True if this tenant handed an email with this Message-ID over (status processed),
        in any folder: since: only rows recorded at or after this epoch; not_uidvalidity: only
        rows of another UIDVALIDITY (what a renumbered folder handled before)."""
        sql = ("SELECT 1 FROM ledger WHERE tenant_id = ? AND message_id = ? "
               "AND status = 'processed'")
        params: list = [tenant_id, message_id]
        if since is not None:
            sql += " AND updated_at >= ?"
            params.append(since)
        if not_uidvalidity is not None:
            sql += " AND uidvalidity != ?"
            params.append(not_uidvalidity)
        return self._query_one(sql + " LIMIT 1", tuple(params)) is not None

    def last_handled_at(self, tenant_id: str, folder: str, uidvalidity: int) -> float | None:
        """When the last email under this UIDVALIDITY was finished (epoch), or None."""
        row = self._query_one(
            f"SELECT max(updated_at) FROM ledger WHERE tenant_id = ? AND folder = ? "
            f"AND uidvalidity = ? AND status IN ({_DONE_SQL})", (tenant_id, folder, uidvalidity))
        return float(row[0]) if row and row[0] is not None else None

    def save_reprocess_until(self, tenant_id: str, folder: str, uidvalidity: int, uid: int) -> None:
        """After a UIDVALIDITY change: UIDs up to uid are checked against the ledger by
        Message-ID before the handler runs. Kept across restarts (a crash mid-way)."""
        self._write([(
            "INSERT INTO reprocess VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, folder) DO UPDATE "
            "SET uidvalidity = excluded.uidvalidity, until_uid = excluded.until_uid, "
            "updated_at = excluded.updated_at",
            (tenant_id, folder, uidvalidity, uid, time.time()))])

    def load_reprocess_until(self, tenant_id: str, folder: str, uidvalidity: int) -> int | None:
        row = self._query_one(
            "SELECT until_uid FROM reprocess WHERE tenant_id = ? AND folder = ? AND uidvalidity = ?",
            (tenant_id, folder, uidvalidity))
        return int(row[0]) if row else None

    def close(self) -> None:
        self._db.close()

    def _query_one(self, sql: str, params: tuple) -> tuple | None:
        try:
            return self._db.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint store read failed: {exc}") from None

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        """Run statements in one IMMEDIATE transaction (takes the write lock up front)."""
        def run() -> None:
            for sql, params in statements:
                self._db.execute(sql, params)

        self._transaction(run)

    def _transaction(self, body: Callable[[], T]) -> T:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint store write failed: {exc}") from None
        return result


def _enable_wal(db: sqlite3.Connection) -> None:
    """Switching a new file to WAL takes an exclusive lock, and SQLite answers another process
    switching at that moment with "database is locked" at once, without waiting busy_timeout: on
    a fresh state_dir, tenants starting together crashed now and then (one in 25 with six). The
    mode is kept in the file, so only a first start meets this: retry within the busy timeout."""
    deadline = time.monotonic() + WAL_SWITCH_DEADLINE
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(WAL_SWITCH_RETRY_PAUSE)


def prepare_file(path: Path) -> None:
    """state_dir this user's and 0700, the database a regular file of ours, 0600 (the ledger
    names senders and subjects), and no link where SQLite will open its files: SQLite follows
    links, so a link planted there would have it write the ledger into the link's target."""
    try:
        secure_dir(path.parent)
        private_sqlite_file(path)
    except UnsafePath as exc:
        raise UnsafeStateFile(str(exc)) from None
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc}") from None
