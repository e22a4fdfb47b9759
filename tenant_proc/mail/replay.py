"""Hand over again the emails an operator marked with `idle-supervisor retry`.

The marks are ledger rows (tenant_proc/store/failed_ledger.py). A tenant looks for them when it starts
(so a retry made while the supervisor was stopped works the same) and whenever the supervisor
forwards a `replay` message (sent after the SIGHUP that `retry` gives it). The replay runs at the
end of a catch-up, when the IMAP connection is free: the marked UIDs, oldest first, are fetched
and handed to the mailbox's usual handling, which records their outcome in the ledger. They all
lie at or below the checkpoint, which never moves back; processed emails are never touched.

A claimed row is `retrying` (or `handling`) at or below the checkpoint, where the mailbox never
looks: only this replayer brings it back. So a replay that something interrupts (the connection
breaks, a store write fails) stays pending, and the catch-up after the reconnect claims the
same rows again (claim_replays returns them); a restart does the same, since a new process
starts pending. A FETCH that breaks the connection counts as an attempt of the email it named
alone, as on the mailbox's own path, so an email that breaks every session ends `failed` again
after max_attempts instead of a reconnect loop.

It also keeps the heartbeat counter `failed_in_ledger` (how many of this tenant's emails are
`failed` now) current: counted at start, after a replay and after the mailbox gives one up.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tenant_proc.imap.fetching import FetchBroken, fetch_bodies
from tenant_proc.process.control import Control
from tenant_proc.store.failed_ledger import ledger_for

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from tenant_proc.mail.mailbox import Mailbox
    from tenant_proc.mail.notice import Notice

FAILED_GAUGE = "failed_in_ledger"


class Replayer:
    def __init__(self, mailbox: Mailbox, control: Control, log: logging.LoggerAdapter) -> None:
        self.mailbox = mailbox
        self.control = control
        self.log = log
        self.ledger = ledger_for(mailbox.store)
        self.pending = True  # at start: rows may have been marked while this tenant was down
        self._failed_at_last_count: int | None = None
        # A FETCH of several marked UIDs broke the connection: fetch them one at a time, so the
        # next break names its email (Mailbox.fetch_singly_until is the same for new mail).
        self.singly = False
        mailbox.replay = self
        control.on_replay = self.request

    def request(self) -> None:
        """The supervisor forwarded `replay` (from the parent-pipe drain: only set flags here)."""
        self.pending = True
        mailbox = self.mailbox
        if mailbox.retry_uid is None:
            # A due "retry" wakes the IDLE/poll loop into a catch-up, at whose end we run. With a
            # handler retry pending, its own wake-up (at most retry_interval away) does the same.
            mailbox.retry_at = time.monotonic()

    def run(self, client: IMAPClient, notice: Notice) -> None:
        """Called at the end of every catch-up; cheap when nothing is marked."""
        if self.pending and self.mailbox.checkpoint is not None:
            self.pending = False  # a request arriving while we replay sets it again
            if self._replay(client, notice):
                self._come_back_later()
            self._count_failed()
        elif self._failed_at_last_count != self.control.counters["failed"]:
            self._count_failed()

    def _replay(self, client: IMAPClient, notice: Notice) -> bool:
        """Claim the marked rows and hand them over; True when some must be tried again later."""
        mailbox = self.mailbox
        spec, checkpoint = mailbox.spec, mailbox.checkpoint
        assert checkpoint is not None
        saved_retry = (mailbox.retry_uid, mailbox.retry_at)
        try:
            uids = self.ledger.claim_replays(spec.id, spec.folder, checkpoint.uidvalidity,
                                             checkpoint.last_uid)
            return bool(uids) and self._hand_over(client, uids, notice)
        except BaseException:
            # Interrupted (ConnectionLost, a broken socket, StoreError, a stop): the claimed
            # rows wait `retrying` below the checkpoint; the next catch-up claims them again.
            self.pending = True
            raise
        finally:
            # The mailbox's retry bookkeeping is for the UID above the checkpoint; a failed
            # replay set it for its own UID. Put it back.
            mailbox.retry_uid, mailbox.retry_at = saved_retry

    def _come_back_later(self) -> None:
        """Some failed again with attempts left: the next round after retry_interval."""
        mailbox = self.mailbox
        self.pending = True
        if mailbox.retry_uid is None:
            mailbox.retry_at = time.monotonic() + mailbox.spec.imap.retry_interval

    def _hand_over(self, client: IMAPClient, uids: list[int], notice: Notice) -> bool:
        mailbox = self.mailbox
        self.log.info("replaying %d email(s) marked for retry: UIDs %s", len(uids),
                      ", ".join(map(str, uids[:20])) + (" ..." if len(uids) > 20 else ""))
        self.control.set_state("processing")
        again = False
        size_batch = mailbox.spec.imap.batch_size
        for start in range(0, len(uids), max(size_batch, 1)):
            batch = uids[start:start + size_batch]
            sizes = {uid: int(item[b"RFC822.SIZE"])
                     for uid, item in client.fetch(batch, ["RFC822.SIZE"]).items()
                     if b"RFC822.SIZE" in item}
            limit = mailbox.spec.imap.max_message_bytes
            try:
                fetched = fetch_bodies(client, [u for u in batch if u in sizes], sizes, limit,
                                       singly=self.singly)
            except FetchBroken as exc:
                mailbox._fetch_broke(exc.uids[0], exc, notice, narrow=self._fetch_singly)
            if fetched.busy is not None:  # quota, incident, throttling: the whole mailbox waits
                mailbox._server_busy(batch[0], fetched.busy[0])  # raises; the replay stays pending
            unserved = []
            for uid in batch:
                self.control.check()
                data: Any = fetched.messages.get(uid)
                if uid in fetched.refused:
                    done = mailbox._attempt_failed(uid, None, fetched.refused[uid], notice)
                elif data is None:
                    unserved.append(uid)
                    continue
                else:
                    done = mailbox._handle(uid, data, notice, truncated=sizes[uid] > limit)
                if not done:
                    again = True  # it failed again, attempts remain: later
            # Not returned: the same rule as new mail (missing.py): expunged if UID SEARCH no
            # longer lists it, else recorded and asked for again at every catch-up.
            self._not_served(client, unserved, notice)
        self.singly = False
        return again

    def _fetch_singly(self) -> None:
        self.singly = True

    def _not_served(self, client: IMAPClient, uids: list[int], notice: Notice) -> None:
        if uids:
            self.log.warning("uid %s: marked for retry, but the server did not return it",
                             ", ".join(map(str, uids)))
        self.mailbox.missing.settle(client, uids, notice)

    def _count_failed(self) -> None:
        spec = self.mailbox.spec
        self.control.counters[FAILED_GAUGE] = self.ledger.count_failed(spec.id)
        self._failed_at_last_count = self.control.counters["failed"]
