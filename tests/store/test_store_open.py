"""Tenants starting together on a fresh state_dir all open the shared SQLite store.

Before: switching the new file to WAL raced, and SQLite answered the loser "database is locked"
at once (busy_timeout does not cover it), so a tenant crashed on its first start and waited
`restart_backoff` (60 s by default). Seen in the supervisor log of a test run:
`[Company 00] crashed: StoreError: cannot open .../checkpoints.sqlite3: database is locked`.
"""
from __future__ import annotations

import os
from pathlib import Path

from tenant_proc.store.sqlite import DB_NAME, SqliteStore

PROCESSES = 8
ROUNDS = 40  # the race lost about once in 25 opens of six at once on a 2-core machine


def _open_in_children(path: Path) -> int:
    pids = []
    for _ in range(PROCESSES):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                SqliteStore(path).close()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    return failed


def test_processes_opening_a_fresh_store_at_once_all_succeed(tmp_path):
    failures = sum(_open_in_children(tmp_path / f"round{n}" / DB_NAME) for n in range(ROUNDS))
    assert failures == 0, f"{failures} of {PROCESSES * ROUNDS} opens failed"
    store = SqliteStore(tmp_path / "round0" / DB_NAME)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
