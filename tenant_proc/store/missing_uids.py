"""The record of UIDs the server lists but does not return, in both backends.

Exchange lists a new UID in `UID SEARCH` while `UID FETCH` leaves it out, for minutes or for
good. The mailbox hands over the mail after it and lets its checkpoint move past it only once
the UID is written here: a restart still knows it, asks for it again and hands it over once the
server serves it (tenant_proc/mail/missing.py). A row lives until the UID has a done ledger row
(processed, failed after [imap] missing_uid_timeout, expunged, duplicate).

Mixins of SqliteStore and SupabaseStore, as the arbiter's halves are of the Arbiter: they use
the store's own connection and request helpers. SQLite: the table `missing_uids` in the shared
checkpoints file; Supabase: `missing_uids` from sql/009_missing_uids.sql.

first_seen is wall-clock time (epoch): it must survive a restart, which no monotonic clock does.
"""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from tenant_proc.store.api import StoreError

MISSING_SCHEMA = """
CREATE TABLE IF NOT EXISTS missing_uids (
    tenant_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (tenant_id, folder, uidvalidity, uid)
);
"""
MISSING_TABLE = "missing_uids"
MAX_MISSING = 1000  # one read; a mailbox hiding more than this has bigger problems


class SqliteMissingUids:
    # SqliteStore's (tenant_proc/store/sqlite.py): annotations only, nothing defined at runtime.
    _db: sqlite3.Connection
    _write: Callable[[list[tuple[str, tuple]]], None]

    def record_missing(self, tenant_id: str, folder: str, uidvalidity: int, uids: Sequence[int],
                       seen_at: float) -> None:
        """Insert-or-ignore: a UID already recorded keeps its first_seen."""
        self._write([("INSERT INTO missing_uids VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                      (tenant_id, folder, uidvalidity, uid, seen_at)) for uid in uids])

    def missing_uids(self, tenant_id: str, folder: str, uidvalidity: int) -> dict[int, float]:
        """{uid: first seen (epoch)}, lowest UID first."""
        try:
            rows = self._db.execute(
                "SELECT uid, first_seen FROM missing_uids WHERE tenant_id = ? AND folder = ? "
                f"AND uidvalidity = ? ORDER BY uid LIMIT {MAX_MISSING}",
                (tenant_id, folder, uidvalidity)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint store read failed: {exc}") from None
        return {int(uid): float(seen) for uid, seen in rows}

    def forget_missing(self, tenant_id: str, folder: str, uidvalidity: int, uids: Sequence[int]) -> None:
        self._write([("DELETE FROM missing_uids WHERE tenant_id = ? AND folder = ? AND uidvalidity = ? "
                      "AND uid = ?", (tenant_id, folder, uidvalidity, uid)) for uid in uids])


class SupabaseMissingUids:
    # SupabaseStore's (tenant_proc/store/supabase.py): annotations only, nothing defined at runtime.
    # Not fenced in cluster mode: a row is written before the (fenced) checkpoint moves past its
    # UID and removed only after a fenced ledger write succeeded, so a stale instance can add a
    # row (the owner then asks for a UID it may already have: the ledger says done) but never
    # remove one the owner relies on.
    _client: Any
    _run: Callable[..., Any]

    def record_missing(self, tenant_id: str, folder: str, uidvalidity: int, uids: Sequence[int],
                       seen_at: float) -> None:
        if not uids:
            return
        seen = datetime.fromtimestamp(seen_at, timezone.utc).isoformat()
        rows = [{"company_id": tenant_id, "folder": folder, "uidvalidity": uidvalidity, "uid": uid,
                 "first_seen": seen} for uid in uids]
        self._run("record missing UIDs", tenant_id, lambda: (
            self._client.table(MISSING_TABLE).upsert(rows, on_conflict="company_id,folder,uidvalidity,uid",
                                                     ignore_duplicates=True, returning="minimal")
            .execute()))

    def missing_uids(self, tenant_id: str, folder: str, uidvalidity: int) -> dict[int, float]:
        rows = self._run("read missing UIDs", tenant_id, lambda: (
            self._client.table(MISSING_TABLE).select("uid,first_seen").eq("company_id", tenant_id)
            .eq("folder", folder).eq("uidvalidity", uidvalidity).order("uid").limit(MAX_MISSING)
            .execute().data))
        return {int(r["uid"]): datetime.fromisoformat(r["first_seen"]).timestamp() for r in rows}

    def forget_missing(self, tenant_id: str, folder: str, uidvalidity: int, uids: Sequence[int]) -> None:
        if not uids:
            return
        self._run("forget missing UIDs", tenant_id, lambda: (
            self._client.table(MISSING_TABLE).delete(returning="minimal").eq("company_id", tenant_id)
            .eq("folder", folder).eq("uidvalidity", uidvalidity).in_("uid", list(uids)).execute()))
