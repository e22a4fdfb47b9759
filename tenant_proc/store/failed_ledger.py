"""Failed emails in the ledger: list them, mark them for another round, claim them for replay.

Used from both sides: `idle-supervisor failed` / `retry` (supervisor/cli/failed.py) list and
mark, the tenant process (tenant_proc/mail/replay.py) claims what was marked and reports how many of
its emails are `failed`. Works on the same ledger the mailbox writes (store.SqliteStore's
`ledger` table or Supabase's processed_emails), through the store's own connection.

Statuses involved (sql/003): `failed` (given up), `replay` (an operator asked for another
round). A claimed replay becomes `retrying` with its attempts reset, so the mailbox's own
mark_done/record_attempt_failure finish it exactly like a new email; a `retrying` or `handling`
row at or below the checkpoint can only be a replay in progress (new mail is always above it),
so a replay interrupted by a crash is picked up again on the next start, and one interrupted by
a broken connection or a failed write after the reconnect (tenant_proc/mail/replay.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

from tenant_proc.store.api import StoreError

MAX_ROWS = 1000  # one listing or count; a tenant with more failed mail has bigger problems
REPLAY_IN_PROGRESS = ("replay", "retrying", "handling")


@dataclass(frozen=True)
class FailedEmail:
    tenant_id: str
    folder: str
    uidvalidity: int
    uid: int
    message_id: str | None
    attempts: int
    error: str | None
    failed_at: str | None  # ISO 8601, UTC

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FailedLedger(Protocol):
    def list_failed(self, tenant_id: str | None = None, status: str = "failed") -> list[FailedEmail]:
        """Rows in `status` (failed; or skipped, duplicate, expunged: `failed --status`)."""

    def mark_replay(self, tenant_id: str, uids: Sequence[int] | None) -> list[FailedEmail]:
        """Mark failed rows `replay` (uids None: all of the tenant's); returns those marked."""

    def claim_replays(self, tenant_id: str, folder: str, uidvalidity: int, last_uid: int) -> list[int]:
        """UIDs to hand over again, oldest first; `replay` rows become `retrying`, attempts 0."""

    def count_failed(self, tenant_id: str) -> int: ...


def ledger_for(store: Any) -> FailedLedger:
    """The failed-email view over an open state store (SqliteStore or SupabaseStore)."""
    if hasattr(store, "_db"):
        return SqliteFailedLedger(store)
    return SupabaseFailedLedger(store)


class SqliteFailedLedger:
    def __init__(self, store: Any) -> None:
        self._store = store
        self._db = store._db

    def list_failed(self, tenant_id: str | None = None, status: str = "failed") -> list[FailedEmail]:
        sql = ("SELECT tenant_id, folder, uidvalidity, uid, message_id, attempts, error, updated_at "
               "FROM ledger WHERE status = ?")
        params: tuple = (status,)
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params = (status, tenant_id)
        rows = self._read(sql + f" ORDER BY tenant_id, updated_at, uid LIMIT {MAX_ROWS}", params)
        return [FailedEmail(*row[:7], failed_at=_iso_epoch(row[7])) for row in rows]

    def mark_replay(self, tenant_id: str, uids: Sequence[int] | None) -> list[FailedEmail]:
        chosen = None if uids is None else set(uids)
        wanted = [e for e in self.list_failed(tenant_id) if chosen is None or e.uid in chosen]
        self._store._write([(
            "UPDATE ledger SET status = 'replay', attempts = 0 WHERE tenant_id = ? AND folder = ? "
            "AND uidvalidity = ? AND uid = ? AND status = 'failed'",
            (e.tenant_id, e.folder, e.uidvalidity, e.uid)) for e in wanted])
        return wanted

    def claim_replays(self, tenant_id: str, folder: str, uidvalidity: int, last_uid: int) -> list[int]:
        key = (tenant_id, folder, uidvalidity, last_uid)
        self._store._write([(
            "UPDATE ledger SET status = 'retrying', attempts = 0 WHERE tenant_id = ? AND folder = ? "
            "AND uidvalidity = ? AND uid <= ? AND status = 'replay'", key)])
        rows = self._read(
            "SELECT uid FROM ledger WHERE tenant_id = ? AND folder = ? AND uidvalidity = ? "
            "AND uid <= ? AND status IN ('retrying', 'handling') ORDER BY uid", key)
        return [int(row[0]) for row in rows]

    def count_failed(self, tenant_id: str) -> int:
        rows = self._read("SELECT count(*) FROM ledger WHERE tenant_id = ? AND status = 'failed'",
                          (tenant_id,))
        return int(rows[0][0])

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        import sqlite3

        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"ledger read failed: {exc}") from None


class SupabaseFailedLedger:
    """processed_emails through the store's client; errors are StoreErrors without the key."""

    COLUMNS = "company_id,folder,uidvalidity,uid,message_id,attempts,error,processed_at"

    def __init__(self, store: Any) -> None:
        self._store = store
        self._client = store._client

    def list_failed(self, tenant_id: str | None = None, status: str = "failed") -> list[FailedEmail]:
        def query() -> Any:
            q = self._table().select(self.COLUMNS).eq("status", status)
            if tenant_id is not None:
                q = q.eq("company_id", tenant_id)
            return (q.order("company_id").order("processed_at").order("uid")
                    .limit(MAX_ROWS).execute().data)

        rows = self._store._run(f"list {status} emails", tenant_id or "*", query)
        return [FailedEmail(r["company_id"], r["folder"], int(r["uidvalidity"]), int(r["uid"]),
                            r.get("message_id"), int(r.get("attempts") or 0), r.get("error"),
                            _iso_text(r.get("processed_at"))) for r in rows]

    def mark_replay(self, tenant_id: str, uids: Sequence[int] | None) -> list[FailedEmail]:
        chosen = None if uids is None else set(uids)
        wanted = [e for e in self.list_failed(tenant_id) if chosen is None or e.uid in chosen]
        for e in wanted:
            self._store._run("mark for replay", tenant_id, lambda e=e: (
                self._table().update({"status": "replay", "attempts": 0})
                .eq("company_id", e.tenant_id).eq("folder", e.folder)
                .eq("uidvalidity", e.uidvalidity).eq("uid", e.uid).eq("status", "failed")
                .execute()))
        return wanted

    def claim_replays(self, tenant_id: str, folder: str, uidvalidity: int, last_uid: int) -> list[int]:
        def scope(q: Any) -> Any:
            return (q.eq("company_id", tenant_id).eq("folder", folder)
                    .eq("uidvalidity", uidvalidity).lte("uid", last_uid))

        self._store._run("claim replays", tenant_id, lambda: scope(
            self._table().update({"status": "retrying", "attempts": 0})).eq("status", "replay").execute())
        rows = self._store._run("claim replays", tenant_id, lambda: scope(
            self._table().select("uid")).in_("status", ["retrying", "handling"])
            .order("uid").limit(MAX_ROWS).execute().data)
        return [int(r["uid"]) for r in rows]

    def count_failed(self, tenant_id: str) -> int:
        rows = self._store._run("count failed emails", tenant_id, lambda: (
            self._table().select("uid").eq("company_id", tenant_id).eq("status", "failed")
            .limit(MAX_ROWS).execute().data))
        return len(rows)

    def _table(self) -> Any:
        from tenant_proc.store.supabase import LEDGER

        return self._client.table(LEDGER)


def _iso_epoch(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(float(value), timezone.utc).isoformat(timespec="seconds")


def _iso_text(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).astimezone(timezone.utc).isoformat(timespec="seconds")
    except ValueError:
        return value
