"""Where each email's line is in the `jsonl` handler's file: "already written?" in bounded time.

A redelivered email (its process died after the handler ran, before the outcome was recorded)
may already have its line in the shared file. Looking for it by reading the file read all of it,
twice over in memory, under the lock every company's handler waits on. Instead an index beside
the file, `<path>.index` (SQLite, 0600), maps (tenant, folder, uidvalidity, uid) to the offset
and length of that email's line. The entry is written before the line, both under the file's
lock, so:
- a line in the file always has its entry (nothing twice): the check is one index lookup and one
  read of that line's own length at its offset, whatever the size of the file;
- an entry whose line never made it (the process died between the two writes; the file was
  rotated or truncated since) does not match the bytes at its offset, and the email is written
  (nothing lost).
Lines written before the index existed (an upgrade from a version without it) are looked for in
the file's last TAIL_BYTES only. Entries outlive a rotated file harmlessly (they no longer
match); the index may be deleted together with the file.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from tenant_proc.private_files import private_sqlite_file

TAIL_BYTES = 1024 * 1024
SCHEMA = """
CREATE TABLE IF NOT EXISTS lines (
    tenant_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, folder, uidvalidity, uid)
) WITHOUT ROWID
"""
Key = tuple[str, str, int, int]  # tenant_id, folder, uidvalidity, uid

_open: dict[tuple[int, str], LineIndex] = {}  # (pid, index path): one connection per process


class LineIndex:
    def __init__(self, path: Path) -> None:
        # 0600, and no link at it or its companions: the jsonl file itself is never followed
        # either (basic.py), and a link here would have SQLite write into its target.
        private_sqlite_file(path)
        self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        # As the ledger: durable across a crash of any process, which is what redelivery is for.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(SCHEMA)

    def record(self, key: Key, offset: int, length: int) -> None:
        """Before the line is written: where it goes (committed when this returns)."""
        self._db.execute("INSERT OR REPLACE INTO lines VALUES (?, ?, ?, ?, ?, ?)", (*key, offset, length))

    def find(self, key: Key) -> tuple[int, int] | None:
        row = self._db.execute("SELECT offset, length FROM lines WHERE tenant_id = ? AND folder = ? "
                               "AND uidvalidity = ? AND uid = ?", key).fetchone()
        return (row[0], row[1]) if row else None


def index_for(path: Path) -> LineIndex:
    """This process's index of the file at path (opened once; the caller holds the file's lock)."""
    index_path = str(path) + ".index"
    found = _open.get((os.getpid(), index_path))
    if found is None:
        found = _open[(os.getpid(), index_path)] = LineIndex(Path(index_path))
    return found


def already_written(fd: int, index: LineIndex, key: Key, prefix: bytes) -> bool:
    """Does the file (fd, its lock held) hold the line of key, which starts with prefix?"""
    entry = index.find(key)
    if entry is not None:
        offset, length = entry
        line = os.pread(fd, length, offset)
        return len(line) == length and line.startswith(prefix) and line.endswith(b"\n")
    size = os.fstat(fd).st_size
    start = max(0, size - TAIL_BYTES)
    tail = (b"\n" if start == 0 else b"") + os.pread(fd, size - start, start)
    return b"\n" + prefix in tail
