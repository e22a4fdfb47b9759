"""Checkpoints and the processed/failed ledger in Supabase (`[state] backend = "supabase"`).

Tables imap_checkpoints and processed_emails from sql/001_init.sql, keyed by company id, so a
fresh container (empty state_dir) carries on exactly where the last one stopped.

Each write is a single conditional statement, so no read-then-write race can move a checkpoint
back or overwrite a finished ledger row:
- the checkpoint advances with `PATCH ... WHERE uidvalidity = V AND last_uid < uid`; only when
  no row exists yet is one inserted (insert-or-ignore);
- a ledger row is inserted-or-ignored, and an existing one is only updated while it is still
  'retrying' or 'handling' (a done row stays as it was: mark_done is idempotent, and a late
  failure of a finished email counts nothing);
- begin_attempt marks the UID 'handling' before the handler runs, as the SQLite store does
  (api.py): a write failing after the handler ran, or a death, hands the email over
  again as redelivered and counts the attempt, instead of re-running the handler unmarked.

Created inside the tenant process, after the fork (see backend.open_store): nothing inherited.

[cluster]: with a fencing token (spec.fencing_token) every write goes through the fenced_* SQL
functions of sql/002_cluster.sql (as sql/006 and sql/010 redefine them) instead, each one
transaction that first checks the company's lease still carries this token; is_done (asked
before each handler call) also requires the lease to be unexpired. A refusal raises LeaseLost and the tenant exits: another instance owns the
company now, and nothing this process does may land.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable

from tenant_proc.http_clients.supabase import close_client, describe_error, make_client
from tenant_proc.spec import StateSpec
from tenant_proc.store.api import (
    DONE_STATUSES,
    Checkpoint,
    LeaseLost,
    SchemaOutdated,
    StoreError,
    ledger_text,
)
from tenant_proc.store.missing_uids import SupabaseMissingUids

# The logger keeps the name it had before the store moved into a folder: operators filter on it.
log = logging.getLogger("tenant_proc.store_supabase")

CHECKPOINTS = "imap_checkpoints"
LEDGER = "processed_emails"
LEDGER_KEY = "company_id,folder,uidvalidity,uid"
CHECKPOINT_KEY = "company_id,folder"
# sql/003 allows expunged (gone before the FETCH) and duplicate (Message-ID already handled),
# sql/008 skipped (a class `[imap] skip` keeps from the handler).
UNFINISHED_STATUSES = ("retrying", "handling")
ATTEMPT_RETRIES = 5  # optimistic-concurrency rounds for the attempts counter


# One request, as a whole (tenant_proc/http_clients/deadline.py): a tenant blocked in one request sends
# no heartbeat, so the supervisor derives the bound from heartbeat_timeout
# (supervisor/config/timeouts.py, StateSpec.request_timeout). Between requests the store beats
# (keepalive), so a chain of slow requests (mark_done makes up to four) never adds up to a
# "hung" kill either: a request that runs out of time is a StoreError, the failure of that step
# (the email stays unhandled or 'handling', the tenant reconnects and tries again).
STORE_TIMEOUT = StateSpec().request_timeout
LEASE_LOST_CODE = "PT409"  # the SQLSTATE the fence raises; PostgREST answers it as HTTP 409
# No fenced_begin_attempt (PostgREST's PGRST202, PostgreSQL's 42883), or a status check without
# 'handling' (23514): a database migrated before sql/003 and sql/006 (or, for 'skipped',
# sql/008). No table missing_uids (PostgREST's PGRST205, PostgreSQL's 42P01): before sql/009.
OUTDATED_SCHEMA_CODES = frozenset({"PGRST202", "42883", "23514", "PGRST205", "42P01"})


class SupabaseStore(SupabaseMissingUids):
    def __init__(self, url: str, key: str, timeout: float = STORE_TIMEOUT,
                 fencing_token: int | None = None,
                 keepalive: Callable[[], None] | None = None) -> None:
        self._url = url
        self._key = key  # kept only to scrub it from error text
        self._token = fencing_token
        self._handling_mark = True  # False once the database turned out not to have it
        self._keepalive = keepalive  # Control.heartbeat_if_due: a beat before each request
        try:
            self._client = make_client(url, key, timeout=timeout, total_timeout=timeout)
        except Exception as exc:
            raise StoreError(f"Supabase state store not usable: {describe_error(exc, key)}") from None

    def __repr__(self) -> str:
        return f"SupabaseStore(url={self._url!r})"

    # --- StateStore --------------------------------------------------------------------------

    def load_checkpoint(self, tenant_id: str, folder: str) -> Checkpoint | None:
        rows = self._run("read checkpoint", tenant_id, lambda: (
            self._client.table(CHECKPOINTS).select("uidvalidity,last_uid")
            .eq("company_id", tenant_id).eq("folder", folder).execute().data))
        return Checkpoint(int(rows[0]["uidvalidity"]), int(rows[0]["last_uid"])) if rows else None

    def save_checkpoint(self, tenant_id: str, folder: str, checkpoint: Checkpoint) -> None:
        if self._token is not None:
            self._fenced("save checkpoint", tenant_id, "fenced_save_checkpoint", {
                "p_company": tenant_id, "p_folder": folder, "p_uidvalidity": checkpoint.uidvalidity,
                "p_last_uid": checkpoint.last_uid})
            return
        row = {"company_id": tenant_id, "folder": folder,
               "uidvalidity": checkpoint.uidvalidity, "last_uid": checkpoint.last_uid}
        self._run("save checkpoint", tenant_id, lambda: (
            self._client.table(CHECKPOINTS).upsert(row, on_conflict=CHECKPOINT_KEY, returning="minimal")
            .execute()))

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
        if status not in DONE_STATUSES:
            raise ValueError(f"status must be one of {DONE_STATUSES}, not {status!r}")
        message_id, error = ledger_text(message_id), ledger_text(error)
        if self._token is not None:
            self._fenced("write ledger", tenant_id, "fenced_mark_done", {
                "p_company": tenant_id, "p_folder": folder, "p_uidvalidity": uidvalidity,
                "p_uid": uid, "p_message_id": message_id, "p_status": status,
                "p_error": error})
            return
        key = _ledger_key(tenant_id, folder, uidvalidity, uid)
        fields = {"message_id": message_id, "status": status, "error": error,
                  "processed_at": _now()}
        # Ledger first: a crash before the checkpoint moves leaves a done row that is_done() sees.
        inserted = self._run("write ledger", tenant_id, lambda: (
            self._client.table(LEDGER).upsert({**key, **fields}, on_conflict=LEDGER_KEY,
                                              ignore_duplicates=True).execute().data))
        if not inserted:  # a row existed: finish it only if it is not done yet
            self._run("write ledger", tenant_id, lambda: (
                _match(self._client.table(LEDGER).update(fields), key)
                .in_("status", UNFINISHED_STATUSES).execute()))
        self._advance_checkpoint(tenant_id, folder, uidvalidity, uid)

    def record_attempt_failure(
        self, tenant_id: str, folder: str, uidvalidity: int, uid: int,
        message_id: str | None, error: str,
    ) -> int:
        message_id, error = ledger_text(message_id), ledger_text(error) or ""
        if self._token is not None:
            return int(self._fenced("count attempt", tenant_id, "fenced_record_attempt", {
                "p_company": tenant_id, "p_folder": folder, "p_uidvalidity": uidvalidity,
                "p_uid": uid, "p_message_id": message_id, "p_error": error}))
        key = _ledger_key(tenant_id, folder, uidvalidity, uid)
        first = {**key, "message_id": message_id, "status": "retrying", "attempts": 1,
                 "error": error}
        inserted = self._run("count attempt", tenant_id, lambda: (
            self._client.table(LEDGER).upsert(first, on_conflict=LEDGER_KEY,
                                              ignore_duplicates=True).execute().data))
        if inserted:
            return 1
        # Increment with a compare-and-set on the old status and value: no lost update if two
        # writers race, and a row that is done (or becomes done meanwhile) is never reopened:
        # a late failure of a finished email counts nothing (as the SQLite ledger and
        # sql/010's fenced_record_attempt do).
        for _ in range(ATTEMPT_RETRIES):
            rows = self._run("count attempt", tenant_id, lambda: (
                _match(self._client.table(LEDGER).select("status,attempts"), key).execute().data))
            if not rows:  # deleted meanwhile: start again from one
                return self.record_attempt_failure(tenant_id, folder, uidvalidity, uid, message_id, error)
            status, current = rows[0]["status"], int(rows[0]["attempts"])
            if status in DONE_STATUSES:
                return current
            updated = self._run("count attempt", tenant_id, lambda: (
                _match(self._client.table(LEDGER).update({"attempts": current + 1, "error": error,
                                                          "status": "retrying"}), key)
                .eq("status", status).eq("attempts", current).execute().data))
            if updated:
                return current + 1
        raise StoreError(f"tenant {tenant_id}: attempts counter kept changing under us; retry later")

    def begin_attempt(self, tenant_id: str, folder: str, uidvalidity: int, uid: int) -> tuple[str | None, int]:
        """Mark the UID 'handling' before the handler runs; return its previous status and
        attempts (semantics: SqliteStore.begin_attempt). Almost always the UID has no row yet:
        one insert-or-ignore. An existing row is changed with a compare-and-set on its old
        status and attempts, so two writers cannot both count the same death.

        On a database without sql/003 and sql/006 it says so once and answers as is_done()
        did before (plain at-least-once in that window), rather than stopping all mail."""
        if not self._handling_mark:
            return ("processed" if self.is_done(tenant_id, folder, uidvalidity, uid) else None), 0
        try:
            return self._begin_attempt(tenant_id, folder, uidvalidity, uid)
        except SchemaOutdated as exc:
            self._handling_mark = False
            log.warning("%s; run sql/003_ledger_statuses.sql and sql/006_faults_mail.sql to get the "
                        "'handling' mark (until then an email can be handed over again unmarked)", exc)
            return self.begin_attempt(tenant_id, folder, uidvalidity, uid)

    def _begin_attempt(self, tenant_id: str, folder: str, uidvalidity: int, uid: int) -> tuple[str | None, int]:
        if self._token is not None:
            answer = self._fenced("mark handling", tenant_id, "fenced_begin_attempt", {
                "p_company": tenant_id, "p_folder": folder, "p_uidvalidity": uidvalidity,
                "p_uid": uid})
            return answer.get("status"), int(answer.get("attempts") or 0)
        key = _ledger_key(tenant_id, folder, uidvalidity, uid)
        inserted = self._run("mark handling", tenant_id, lambda: (
            self._client.table(LEDGER).upsert({**key, "status": "handling", "attempts": 0},
                                              on_conflict=LEDGER_KEY, ignore_duplicates=True)
            .execute().data))
        if inserted:
            return None, 0
        for _ in range(ATTEMPT_RETRIES):
            rows = self._run("mark handling", tenant_id, lambda: (
                _match(self._client.table(LEDGER).select("status,attempts"), key).execute().data))
            if not rows:  # deleted meanwhile: start again
                return self.begin_attempt(tenant_id, folder, uidvalidity, uid)
            status, attempts = rows[0]["status"], int(rows[0]["attempts"])
            if status in DONE_STATUSES:
                return status, attempts
            counted = attempts + 1 if status == "handling" else attempts
            updated = self._run("mark handling", tenant_id, lambda: (
                _match(self._client.table(LEDGER).update({"status": "handling", "attempts": counted}), key)
                .eq("status", status).eq("attempts", attempts).execute().data))
            if updated:
                return status, counted
        raise StoreError(f"tenant {tenant_id}: ledger row kept changing under us; retry later")

    def is_done(self, tenant_id: str, folder: str, uidvalidity: int, uid: int) -> bool:
        if self._token is not None:
            return bool(self._fenced("read ledger", tenant_id, "fenced_is_done", {
                "p_company": tenant_id, "p_folder": folder, "p_uidvalidity": uidvalidity,
                "p_uid": uid}))
        key = _ledger_key(tenant_id, folder, uidvalidity, uid)
        rows = self._run("read ledger", tenant_id, lambda: (
            _match(self._client.table(LEDGER).select("status"), key).execute().data))
        return bool(rows) and rows[0]["status"] in DONE_STATUSES

    # --- Message-ID deduplication and UIDVALIDITY changes (optional StateStore methods) ------

    def handled_message_id(
        self, tenant_id: str, message_id: str, since: float | None = None,
        not_uidvalidity: int | None = None,
    ) -> bool:
        """As SqliteStore.handled_message_id (sql/003 indexes (company_id, message_id))."""
        def query() -> Any:
            q = (self._client.table(LEDGER).select("uid").eq("company_id", tenant_id)
                 .eq("message_id", message_id).eq("status", "processed"))
            if since is not None:
                q = q.gte("processed_at", datetime.fromtimestamp(since, timezone.utc).isoformat())
            if not_uidvalidity is not None:
                q = q.neq("uidvalidity", not_uidvalidity)
            return q.limit(1).execute().data
        return bool(self._run("read ledger", tenant_id, query))

    def last_handled_at(self, tenant_id: str, folder: str, uidvalidity: int) -> float | None:
        rows = self._run("read ledger", tenant_id, lambda: (
            self._client.table(LEDGER).select("processed_at").eq("company_id", tenant_id)
            .eq("folder", folder).eq("uidvalidity", uidvalidity).in_("status", list(DONE_STATUSES))
            .order("processed_at", desc=True).limit(1).execute().data))
        return datetime.fromisoformat(rows[0]["processed_at"]).timestamp() if rows else None

    def close(self) -> None:
        close_client(self._client)

    # --- helpers -----------------------------------------------------------------------------

    def _advance_checkpoint(self, tenant_id: str, folder: str, uidvalidity: int, uid: int) -> None:
        """Forward only, and only within the same UIDVALIDITY (a stale writer changes nothing)."""
        moved = self._run("advance checkpoint", tenant_id, lambda: (
            self._client.table(CHECKPOINTS).update({"last_uid": uid})
            .eq("company_id", tenant_id).eq("folder", folder)
            .eq("uidvalidity", uidvalidity).lt("last_uid", uid).execute().data))
        if moved:
            return
        # Nothing moved: already at/after uid, another UIDVALIDITY, or no checkpoint yet. Only
        # the last case writes, and insert-or-ignore cannot touch an existing row.
        row = {"company_id": tenant_id, "folder": folder, "uidvalidity": uidvalidity, "last_uid": uid}
        self._run("advance checkpoint", tenant_id, lambda: (
            self._client.table(CHECKPOINTS).upsert(row, on_conflict=CHECKPOINT_KEY,
                                                   ignore_duplicates=True, returning="minimal")
            .execute()))

    def _fenced(self, what: str, tenant_id: str, function: str, params: dict[str, Any]) -> Any:
        params = {**params, "p_token": self._token}
        return self._run(what, tenant_id, lambda: self._client.rpc(function, params).execute().data)

    def _run(self, what: str, tenant_id: str, call: Any) -> Any:
        """One request. The heartbeat before it bounds the silence to one request's timeout."""
        if self._keepalive is not None:
            self._keepalive()
        try:
            return call()
        except StoreError:
            raise
        except Exception as exc:
            if _is_lease_lost(exc):
                raise LeaseLost(f"tenant {tenant_id}: {what} refused, "
                                f"{getattr(exc, 'message', None) or exc}") from None
            reason = describe_error(exc, self._key)
            if getattr(exc, "code", None) in OUTDATED_SCHEMA_CODES:
                raise SchemaOutdated(f"Supabase state store: {what} failed for tenant {tenant_id}: "
                                     f"{reason}") from None
            if getattr(exc, "code", None) == "23503":
                reason = (f"company {tenant_id!r} is not in the companies table "
                          "(the supabase state backend keys checkpoints by company id)")
            raise StoreError(f"Supabase state store: {what} failed for tenant {tenant_id}: {reason}") from None


def _is_lease_lost(exc: BaseException) -> bool:
    message = str(getattr(exc, "message", "") or "")
    return getattr(exc, "code", None) == LEASE_LOST_CODE or message.startswith("lease lost")


def _ledger_key(tenant_id: str, folder: str, uidvalidity: int, uid: int) -> dict[str, Any]:
    return {"company_id": tenant_id, "folder": folder, "uidvalidity": uidvalidity, "uid": uid}


def _match(query: Any, key: dict[str, Any]) -> Any:
    for column, value in key.items():
        query = query.eq(column, value)
    return query


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
