"""The interface every checkpoint/ledger backend implements (SQLite embedded, Supabase).

Semantics the mailbox loop relies on:
- The checkpoint is (uidvalidity, last_uid) per (tenant, folder): every UID <= last_uid under
  that uidvalidity is finished (processed or recorded as failed). It only moves forward.
- mark_done() records the ledger row AND advances the checkpoint; backends do it atomically
  where they can (SQLite: one transaction). It is idempotent per (tenant, folder,
  uidvalidity, uid): calling it twice changes nothing the second time.
- record_attempt_failure() counts a handler failure and returns the attempts so far, which
  survive a process crash so a poison email is not retried forever.
- A backend is opened inside the tenant process, after the fork: nothing is inherited.
- Optional: begin_attempt(tenant_id, folder, uidvalidity, uid) -> (previous status, attempts).
  Marks the UID "handling" before the handler runs, so a crash between the handler's return
  and mark_done() is seen after the restart and the email handed over as `redelivered`, and a
  death while handling counts as an attempt (an email that kills its process is given up after
  max_attempts). Both backends have it (Supabase since sql/006_faults_mail.sql).
- Optional, for Message-ID deduplication and UIDVALIDITY changes (tenant_proc/mail/uidvalidity.py):
  handled_message_id(tenant_id, message_id, since=None, not_uidvalidity=None) -> bool,
  last_handled_at(tenant_id, folder, uidvalidity) -> epoch | None (both backends), and
  save_reprocess_until / load_reprocess_until (SQLite: the reprocessing range survives a
  restart; elsewhere it lives in the process). Done statuses also include "expunged",
  "duplicate" and "skipped" (a class `[imap] skip` keeps from the handler; the class is the
  row's error).
- UIDs the server lists (UID SEARCH) but does not return in a FETCH (tenant_proc/mail/missing.py):
  record_missing(tenant_id, folder, uidvalidity, uids, seen_at) inserts or ignores (a UID keeps
  its first seen time, an epoch), missing_uids(tenant_id, folder, uidvalidity) -> {uid: first
  seen}, forget_missing(...) drops UIDs that got a done ledger row. Written before the checkpoint
  moves past such a UID: the record is what lets it move. Both backends (SQLite: table
  missing_uids; Supabase: sql/009_missing_uids.sql; store/missing_uids.py).
- Text written to the ledger (Message-ID, error) goes through ledger_text(): NUL removed
  (PostgreSQL text cannot hold it, and a refused write after the handler ran used to hand the
  email over again about once a second), unpaired surrogates replaced, length bounded.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

# A ledger row in one of these is finished: handed over (or given up on) once, never again.
# The one list for Python; the Supabase ledger's is sql/008's idle_supervisor_done_statuses().
DONE_STATUSES = ("processed", "failed", "expunged", "duplicate", "skipped")


MAX_LEDGER_TEXT = 2000  # a Message-ID is ~60 characters; a handler's error text is cut here


def ledger_text(text: str | None) -> str | None:
    """A string every backend stores as given: no NUL, valid UTF-8, at most MAX_LEDGER_TEXT."""
    if text is None:
        return None
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= MAX_LEDGER_TEXT else text[:MAX_LEDGER_TEXT] + "…"


class Checkpoint(NamedTuple):
    uidvalidity: int
    last_uid: int


class StateStore(Protocol):
    def load_checkpoint(self, tenant_id: str, folder: str) -> Checkpoint | None: ...

    def save_checkpoint(self, tenant_id: str, folder: str, checkpoint: Checkpoint) -> None:
        """Set the checkpoint outright (first start, UIDVALIDITY change)."""

    def mark_done(
        self,
        tenant_id: str,
        folder: str,
        uidvalidity: int,
        uid: int,
        message_id: str | None,
        status: str,  # one of DONE_STATUSES
        error: str | None = None,
    ) -> None: ...

    def record_attempt_failure(
        self, tenant_id: str, folder: str, uidvalidity: int, uid: int,
        message_id: str | None, error: str,
    ) -> int: ...

    def is_done(self, tenant_id: str, folder: str, uidvalidity: int, uid: int) -> bool: ...

    def record_missing(self, tenant_id: str, folder: str, uidvalidity: int, uids: Sequence[int],
                       seen_at: float) -> None: ...

    def missing_uids(self, tenant_id: str, folder: str, uidvalidity: int) -> dict[int, float]: ...

    def forget_missing(self, tenant_id: str, folder: str, uidvalidity: int, uids: Sequence[int]) -> None: ...

    def close(self) -> None: ...


class StoreError(RuntimeError):
    """The backend could not read or write; the caller retries later, never skips mail."""


class UnsafeStateFile(StoreError):
    """state_dir or a file in it is not safe to use (another account's directory, a symbolic
    link where a file belongs: tenant_proc/private_files.py). A config error: retrying cannot
    help until the operator fixes the directory."""


class LeaseLost(StoreError):
    """[cluster]: the database refused a write because another instance now holds this company
    (a newer fencing token) or the lease expired. Retrying cannot help: the tenant exits."""


class SchemaOutdated(StoreError):
    """The database lacks a migration this call needs (Supabase: sql/003, sql/006, sql/008,
    sql/009)."""
