"""What becomes of one UID: processed, a duplicate, a failed attempt to retry, given up on; and
the checkpoint that moves past it. Every outcome is a ledger row before the checkpoint moves.

A mixin of Mailbox (mailbox.py), as the arbiter's halves are of the Arbiter: it records
outcomes in the mailbox's store and moves the mailbox's checkpoint.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, NoReturn

from ipc import protocol
from tenant_proc.errors import ConnectionLost, ServerBusy
from tenant_proc.imap.fetching import FetchBroken
from tenant_proc.mail.notice import Notice
from tenant_proc.mail.processed_rows import HeldProcessedRow
from tenant_proc.process.control import Control
from tenant_proc.spec import TenantSpec
from tenant_proc.store.api import Checkpoint, SchemaOutdated, StateStore, ledger_text


class LedgerOutcomes:
    # The mailbox's (tenant_proc/mail/mailbox.py): annotations only, nothing defined at runtime.
    spec: TenantSpec
    store: StateStore
    control: Control
    log: logging.LoggerAdapter
    checkpoint: Checkpoint | None
    retry_uid: int | None
    retry_at: float | None
    progress: int
    dedupe_until: int | None
    held_row: HeldProcessedRow

    def _retry_pending(self, uid: int) -> bool:
        return self.retry_uid == uid and self.retry_at is not None and time.monotonic() < self.retry_at

    def _server_busy(self, uid: int, error: str) -> NoReturn:
        """Quota, incident, throttling: the server refuses the mailbox, not this email. No
        attempt is counted; the session drops the connection and the whole mailbox waits in
        `backoff` (what the server asked, else a doubling wait), then fetches uid again."""
        raise ServerBusy(f"server busy fetching uid {uid}: {error}"[:500])

    def _fetch_broke(self, uid: int, broken: FetchBroken, notice: Notice,
                     narrow: Callable[[], None] = lambda: None) -> NoReturn:
        """A FETCH broke the connection and uid is the first email without an answer. Nobody's
        attempt when the server's BYE named its own state ("* BYE System Error"): the mailbox
        waits. That email's attempt when it was fetched alone (the reconnect's backoff paces the
        next try, not retry_interval), so one that breaks every session ends `failed` instead
        of a reconnect loop. After a FETCH of several, narrow(): the caller fetches one at a time
        after the reconnect, so the next break names its email. Always raises. The new mail,
        the missing-UID chase and the replay all end a broken FETCH here."""
        if broken.busy is not None:
            self._server_busy(uid, broken.busy)
        if broken.uids == [uid]:
            self._attempt_failed(uid, None, str(broken), notice, wait=False)
        else:
            narrow()
        raise ConnectionLost(str(broken))

    def _recorded(self, uid: int, message_id: str | None, latency: float) -> None:
        """The processed row is durable: move on and tell the parent."""
        assert self.checkpoint is not None
        self._advance(uid, persist=False)
        self.control.counters["processed"] += 1
        self.log.info("processed uid %d %s in %.3fs", uid, message_id, latency)
        self.control.send_soon(
            protocol.processed(uid, self.checkpoint.uidvalidity, message_id, "processed", latency))

    def _already_handled(self, uid: int, message_id: str | None) -> bool:
        """Message-ID deduplication: within [imap] dedupe_window, and for the UIDs a
        UIDVALIDITY change renumbered (against what the old UIDVALIDITY handled). Mail without
        a Message-ID (or with an empty `<>`, which some mailers put on everything) is never a
        duplicate. Looked up as the ledger stores it (ledger_text: no NUL, bounded length)."""
        lookup = getattr(self.store, "handled_message_id", None)
        message_id = ledger_text(message_id)
        if lookup is None or not message_id or not message_id.strip("<> \t"):
            return False
        assert self.checkpoint is not None
        window = self.spec.imap.dedupe_window
        if window > 0 and lookup(self.spec.id, message_id, since=time.time() - window):
            return True
        return (self.dedupe_until is not None and uid <= self.dedupe_until
                and lookup(self.spec.id, message_id, not_uidvalidity=self.checkpoint.uidvalidity))

    def _duplicate(self, uid: int, message_id: str, notice: Notice) -> bool:
        spec = self.spec
        assert self.checkpoint is not None
        self.store.mark_done(spec.id, spec.folder, self.checkpoint.uidvalidity, uid, message_id, "duplicate")
        self._advance(uid, persist=False)
        self.log.info("uid %d %s: already handled, recorded as duplicate", uid, message_id)
        self.control.send(protocol.processed(uid, self.checkpoint.uidvalidity, message_id, "duplicate",
                                             time.monotonic() - notice.mono))
        return True

    def _skipped(self, uid: int, message_id: str | None, skip_class: str, notice: Notice) -> bool:
        """A class `[imap] skip` lists: recorded `skipped` with the class as its error, never
        handed over; the checkpoint moves past it as past a handled email. False (hand it
        over after all) when the Supabase ledger predates sql/008 and refuses the status:
        an email handed over is better than one lost or a mailbox stuck on it."""
        spec = self.spec
        assert self.checkpoint is not None
        try:
            self.store.mark_done(spec.id, spec.folder, self.checkpoint.uidvalidity, uid, message_id,
                                 "skipped", skip_class)
        except SchemaOutdated as exc:
            self.log.warning("uid %d is %s but cannot be recorded as skipped (%s): run "
                             "sql/008_answering.sql; handing it over", uid, skip_class, exc)
            return False
        self._advance(uid, persist=False)
        counters = self.control.counters
        for name in ("skipped", f"skipped_{skip_class}"):
            counters[name] = counters.get(name, 0) + 1
        self.log.info("uid %d %s: skipped (%s)", uid, message_id, skip_class)
        self.control.send(protocol.processed(uid, self.checkpoint.uidvalidity, message_id, "skipped",
                                             time.monotonic() - notice.mono, skip_class))
        return True

    def _begin_attempt(self, uidvalidity: int, uid: int) -> tuple[str | None, int]:
        """The UID's previous ledger status and attempts; marks it "handling" where it can,
        in one transaction with the held processed row of the previous email (processed_rows.py)."""
        combined = self.held_row.begin_with(uidvalidity, uid)
        if combined is not None:
            return combined
        spec = self.spec
        begin = getattr(self.store, "begin_attempt", None)
        if begin is not None:
            return begin(spec.id, spec.folder, uidvalidity, uid)
        done = self.store.is_done(spec.id, spec.folder, uidvalidity, uid)
        return ("processed" if done else None), 0

    def _attempt_failed(
        self, uid: int, message_id: str | None, error: str, notice: Notice, what: str = "fetch",
        wait: bool = True, permanent: bool = False,
    ) -> bool:
        """One failed attempt at this UID (the handler raised, or the server would not give the
        email): retried after retry_interval, given up after max_attempts."""
        if what == "fetch" and self._finished_before(uid):
            return True
        spec = self.spec
        assert self.checkpoint is not None
        error = error[:500]
        attempts = self.store.record_attempt_failure(
            spec.id, spec.folder, self.checkpoint.uidvalidity, uid, message_id, error
        )
        self.log.warning(
            "%s failed on uid %d (attempt %d/%d): %s", what, uid, attempts, spec.imap.max_attempts, error
        )
        self.control.last_error = f"{what}: {error}"[:200]
        # permanent: the handler knows a retry cannot help (PermanentHandlerError: webhook HTTP 400).
        if attempts < spec.imap.max_attempts and not permanent:
            if wait:
                self.retry_uid = uid
                self.retry_at = time.monotonic() + spec.imap.retry_interval
            return False
        return self._give_up(uid, message_id, attempts, error, notice)

    def _finished_before(self, uid: int) -> bool:
        """The FETCH of a UID the ledger shows done failed: its row was written but the
        checkpoint write after it was lost (the Supabase ledger writes the two apart, and a
        request can time out between them). Move past it: a done row never changes and its
        email is never handed over again, however the server treats that UID now."""
        spec = self.spec
        assert self.checkpoint is not None
        if not self.store.is_done(spec.id, spec.folder, self.checkpoint.uidvalidity, uid):
            return False
        self.log.info("uid %d is finished in the ledger already: moving past it", uid)
        self._advance(uid)
        return True

    def _give_up(self, uid: int, message_id: str | None, attempts: int, error: str, notice: Notice) -> bool:
        """Record the UID as failed and move past it: one poison email never blocks a mailbox."""
        spec = self.spec
        assert self.checkpoint is not None
        latency = time.monotonic() - notice.mono
        self.store.mark_done(
            spec.id, spec.folder, self.checkpoint.uidvalidity, uid, message_id, "failed", error
        )
        self._advance(uid, persist=False)
        self.control.counters["failed"] += 1
        self.log.error("gave up on uid %d %s after %d attempts: %s", uid, message_id, attempts, error)
        self.control.send(
            protocol.processed(uid, self.checkpoint.uidvalidity, message_id, "failed", latency)
        )
        return True

    def _advance(self, uid: int, persist: bool = True) -> None:
        """Move the checkpoint past uid; persist=False when mark_done already stored it."""
        assert self.checkpoint is not None
        if uid > self.checkpoint.last_uid:
            self.checkpoint = Checkpoint(self.checkpoint.uidvalidity, uid)
            self.progress += 1
            if persist:
                self.store.save_checkpoint(self.spec.id, self.spec.folder, self.checkpoint)
        if self.retry_uid is not None and uid >= self.retry_uid:
            self._clear_retry()

    def _clear_retry(self) -> None:
        self.retry_uid = None
        self.retry_at = None
