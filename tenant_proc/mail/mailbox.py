"""Everything above the checkpoint: fetch in batches, parse, hand over, advance.

The checkpoint moves only after the handler returned (or the email was given up on after
max_attempts), one UID at a time in UID order, so a crash at any point loses nothing and
processes nothing twice. What is recorded for each UID, and how the checkpoint moves, is the
LedgerOutcomes half (outcomes.py).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Callable

from imapclient import IMAPClient

from ipc import protocol
from tenant_proc.handlers.loader import LoadedHandler, PermanentHandlerError
from tenant_proc.imap.fetching import FetchBroken, batches, connection_broken, fetch_bodies, survey
from tenant_proc.imap.searching import discard_uid_search, read_uid_search, send_uid_search
from tenant_proc.mail.missing import MissingUids
from tenant_proc.mail.notice import Notice
from tenant_proc.mail.outcomes import LedgerOutcomes
from tenant_proc.mail.processed_rows import HeldProcessedRow
from tenant_proc.mail.uidvalidity import restart_point
from tenant_proc.message import Envelope, parse_email
from tenant_proc.message.classify import skipped_class
from tenant_proc.process.control import Control
from tenant_proc.spec import TenantSpec
from tenant_proc.store.api import DONE_STATUSES, Checkpoint, StateStore

# The next UID's first bytes ride along with the size FETCH (never more than max_message_bytes):
# most email is smaller, and is then handled after one round trip instead of two.
PREFETCH_BYTES = 64 * 1024


class Mailbox(LedgerOutcomes):
    def __init__(
        self, spec: TenantSpec, store: StateStore, handler: LoadedHandler, control: Control,
        log: logging.LoggerAdapter,
    ) -> None:
        self.spec = spec
        self.store = store
        self.handler = handler
        self.control = control
        self.log = log
        self.checkpoint: Checkpoint | None = None
        self.retry_uid: int | None = None
        self.retry_at: float | None = None  # monotonic; None when nothing waits for a retry
        # Bumped whenever the checkpoint moves (an email handled, given up, found expunged):
        # the session resets its reconnect backoff only after progress, not after a mere LOGIN
        # or a catch-up that found nothing (session/timing.py backoff_earned).
        self.progress = 0
        # A FETCH of several UIDs broke the connection: up to this UID, fetch one at a time so
        # the next breakage names its email (and counts as that email's attempt).
        self.fetch_singly_until = 0
        # After a UIDVALIDITY change: UIDs up to this are checked against the ledger by
        # Message-ID (uidvalidity.py). Stored where the backend can, else for this process.
        self.dedupe_until: int | None = None
        self.replay: Any = None  # tenant_proc.mail.replay.Replayer: runs after every catch-up
        # UIDs the server lists but did not return: recorded, asked for again at every catch-up.
        self.missing = MissingUids(self, log)
        # The processed row of the last email handled, until the next "handling" mark.
        self.held_row = HeldProcessedRow(store, spec.id, spec.folder, self._recorded)

    # -- checkpoint ----------------------------------------------------------------------

    def sync_checkpoint(self, client: IMAPClient, select_info: dict[bytes, Any]) -> Checkpoint:
        """Load the checkpoint, or create it on first start / after a UIDVALIDITY change."""
        spec = self.spec
        uidvalidity = int(select_info[b"UIDVALIDITY"])
        saved = self.store.load_checkpoint(spec.id, spec.folder)
        if saved is not None and saved.uidvalidity == uidvalidity:
            self.checkpoint = saved
            load = getattr(self.store, "load_reprocess_until", None)
            if load is not None:
                self.dedupe_until = load(spec.id, spec.folder, uidvalidity)
            self.missing.load(uidvalidity)
            return saved
        uidnext = _uidnext(client, spec.folder, select_info)
        self.dedupe_until = None
        if saved is not None:
            start, self.dedupe_until = restart_point(
                client, spec, self.store, saved, uidvalidity, uidnext, self.log)
        else:
            start = self._first_start(client, uidnext)
        self.checkpoint = Checkpoint(uidvalidity, start)
        save = getattr(self.store, "save_reprocess_until", None)
        if self.dedupe_until is not None and save is not None:
            save(spec.id, spec.folder, uidvalidity, self.dedupe_until)
        self.store.save_checkpoint(spec.id, spec.folder, self.checkpoint)
        self._clear_retry()
        self.fetch_singly_until = 0
        self.missing.load(uidvalidity)
        return self.checkpoint

    def _first_start(self, client: IMAPClient, uidnext: int) -> int:
        backfill = self.spec.imap.backfill
        if backfill == "all":
            return 0
        if backfill == "unseen":
            unseen = client.search(["UNSEEN"])
            return min(unseen) - 1 if unseen else uidnext - 1
        return uidnext - 1

    # -- catch up ------------------------------------------------------------------------

    def catch_up(
        self, client: IMAPClient, notice: Notice, on_sent: Callable[[], None] | None = None
    ) -> None:
        """Process every UID above the checkpoint (stops early if a handler asks for a retry).

        on_sent runs once the first command is on its way, before its answer is read: the
        session uses it to read the end of an IDLE whose DONE went out just before.
        """
        self._catch_up_new(client, notice, on_sent)
        self.missing.chase(client, notice)  # UIDs the server listed earlier but did not return
        if self.replay is not None:  # emails an operator marked for another round
            self.replay.run(client, notice)

    def _catch_up_new(
        self, client: IMAPClient, notice: Notice, on_sent: Callable[[], None] | None
    ) -> None:
        assert self.checkpoint is not None, "sync_checkpoint first"
        # One round trip finds the new UIDs and their sizes (no UID SEARCH first) and, usually,
        # brings the next email along: under load every round trip waits for the server and
        # then for a CPU again.
        imap = self.spec.imap
        prefetch = min(PREFETCH_BYTES, imap.max_message_bytes)
        last = self.checkpoint.last_uid
        if last + 1 <= self.fetch_singly_until:
            prefetch = 0  # the last survey broke the connection: the prefetch may be why
        # What the server lists, to hold against what the FETCH returns (imap/searching.py):
        # sent first, so the server runs it first; same round trip.
        search = send_uid_search(client, f"{last + 1}:*")
        try:
            sizes, early = survey(client, last, prefetch, on_sent)
            listed = read_uid_search(client, search)
        except Exception as exc:
            discard_uid_search(client, search)
            if connection_broken(exc):
                self.fetch_singly_until = max(self.fetch_singly_until, last + 1)
            raise
        # Recorded before anything moves the checkpoint past them (missing.py).
        hidden_top = self.missing.noticed(client, listed, sizes, last)
        uids = sorted(sizes)
        if not uids:
            self._clear_retry()
        else:
            self.control.set_state("processing")
        for batch in batches(uids, sizes, imap.batch_size, imap.max_batch_bytes, imap.max_message_bytes):
            if not self._process_batch(client, batch, sizes, early, notice):
                return
            early = {}
        if hidden_top is not None:  # everything below it is done; it is recorded: move past it
            self._advance(hidden_top)

    def _process_batch(
        self, client: IMAPClient, batch: list[int], sizes: dict[int, int],
        early: dict[int, dict[bytes, Any]], notice: Notice,
    ) -> bool:
        """False when a retry is pending: later UIDs wait so the checkpoint never skips one."""
        if self._retry_pending(batch[0]):
            return False
        limit = self.spec.imap.max_message_bytes
        broken: FetchBroken | None = None
        try:
            fetched = fetch_bodies(client, [u for u in batch if u not in early], sizes, limit,
                                   singly=batch[0] <= self.fetch_singly_until)
        except FetchBroken as exc:  # handle what came before the break, then blame or narrow
            broken, fetched = exc, exc.partial
        messages = {**early, **fetched.messages}
        try:
            return self._handle_batch(client, batch, sizes, messages, fetched, broken, notice)
        finally:  # never wait, fetch or exit (StopRequested, ConnectionLost) with a row held
            self.held_row.write()
            self.control.send_queued()

    def _handle_batch(
        self, client: IMAPClient, batch: list[int], sizes: dict[int, int],
        messages: dict[int, dict[bytes, Any]], fetched: Any, broken: FetchBroken | None, notice: Notice,
    ) -> bool:
        limit = self.spec.imap.max_message_bytes
        for uid in batch:
            self.control.check()
            if self._retry_pending(uid):
                return False
            if uid in fetched.refused or uid not in messages:
                self.held_row.write()  # only _handle writes it together with its own mark
            if uid in fetched.refused:
                done = self._attempt_failed(uid, None, fetched.refused[uid], notice)
            elif uid in messages:
                done = self._handle(uid, messages[uid], notice, truncated=sizes[uid] > limit, defer=True)
            elif broken is not None:
                self._fetch_broke(uid, broken, notice, narrow=lambda: self._fetch_singly(broken.uids))
            elif fetched.busy is not None:
                self._server_busy(uid, fetched.busy[0])
            else:
                done = self._missing(client, uid, notice)
            if not done:
                return False
        return True

    def _fetch_singly(self, uids: list[int]) -> None:
        self.fetch_singly_until = max(self.fetch_singly_until, *uids)

    def _missing(self, client: IMAPClient, uid: int, notice: Notice) -> bool:
        """The FETCH answer left this UID out: expunged meanwhile, or the server (Exchange) lists
        it but does not serve it: then it is recorded and the mailbox moves on (missing.py)."""
        try:
            still_there = uid in client.search(["UID", str(uid)])
        except Exception as exc:
            if connection_broken(exc):
                raise
            still_there = True  # cannot confirm it is gone: keep asking for it
        if still_there:
            self.missing.record([uid])
            self._advance(uid)
            return True
        spec = self.spec
        assert self.checkpoint is not None
        self.store.mark_done(spec.id, spec.folder, self.checkpoint.uidvalidity, uid, None, "expunged")
        self._advance(uid, persist=False)
        self.log.info("uid %d was expunged before it could be fetched", uid)
        self.control.send(protocol.processed(uid, self.checkpoint.uidvalidity, None, "expunged", None))
        return True

    def _handle(
        self, uid: int, data: dict[bytes, Any], notice: Notice, truncated: bool = False, defer: bool = False,
    ) -> bool:
        """defer: leave the processed row to the next "handling" mark (only _process_batch,
        which writes it before anything else, may ask)."""
        spec = self.spec
        assert self.checkpoint is not None
        uidvalidity = self.checkpoint.uidvalidity
        previous, attempts = self._begin_attempt(uidvalidity, uid)
        if previous in DONE_STATUSES:
            self._advance(uid)  # finished before a crash the backend could not make atomic
            return True
        redelivered = previous == "handling"
        if redelivered:
            error = f"the tenant process died while handling it (attempt {attempts}/{spec.imap.max_attempts})"
            self.log.warning("uid %d: %s; handing it over again as redelivered", uid, error)
            if attempts >= spec.imap.max_attempts:
                return self._give_up(uid, None, attempts, error, notice)
        part = b"BODY[HEADER]" if truncated else b"BODY[]"
        raw = data.get(part)
        if not isinstance(raw, bytes):  # never an empty email "truncated" by the server's silence
            return self._attempt_failed(uid, None, f"the server answered without {part.decode()}", notice)
        envelope = Envelope(
            tenant_id=spec.id, folder=spec.folder, uid=uid, uidvalidity=uidvalidity,
            size=int(data.get(b"RFC822.SIZE", 0)), received_at=_epoch(data.get(b"INTERNALDATE")),
            detected_at=notice.wall, truncated=truncated, redelivered=redelivered,
            own_addresses=spec.own_addresses(),
        )
        message_id: str | None = None
        try:
            # Parsing sits inside the try too: a parser bug on one email must count as a
            # failed attempt (and end as "failed"), not crash the process on every restart.
            email = parse_email(raw, envelope)
            message_id = email.message_id
            if self._already_handled(uid, message_id):
                return self._duplicate(uid, message_id, notice)
            kept_away = skipped_class(email.auto, email.from_self, spec.imap.skip)
            if kept_away is not None and self._skipped(uid, message_id, kept_away, notice):
                return True
            self.handler(email)
        except Exception as exc:
            return self._attempt_failed(uid, message_id, f"{type(exc).__name__}: {exc}", notice, "handler",
                                        permanent=isinstance(exc, PermanentHandlerError))
        self.held_row.hold(uidvalidity, uid, email.message_id, time.monotonic() - notice.mono, defer)
        return True



def _uidnext(client: IMAPClient, folder: str, select_info: dict[bytes, Any]) -> int:
    if b"UIDNEXT" in select_info:
        return int(select_info[b"UIDNEXT"])
    return int(client.folder_status(folder, ["UIDNEXT"])[b"UIDNEXT"])


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return 0.0
