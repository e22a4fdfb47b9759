"""UIDs the server lists but does not return: never skipped in silence, never blocking the rest.

Exchange announces a new UID and lists it in `UID SEARCH`, but `UID FETCH` leaves it out for
minutes while later UIDs come back, and some items it never returns (imapclient#441,
EmailEngine#53, MailKit#1615). The mailbox hands over the mail after such a UID (in UID order
within what the server serves) and its checkpoint moves past the UID only once it is recorded
durably here (the store's missing_uids, tenant_proc/store/missing_uids.py). Then, at every
catch-up (so at least every reconcile_interval), each recorded UID at or below the checkpoint is
asked for again:
- served now: handed over like any email (ledger, attempts, redelivery: the mailbox's own path);
- no longer listed by UID SEARCH: it was expunged meanwhile, recorded `expunged`;
- still listed, still not served after [imap] missing_uid_timeout: recorded `failed` with an
  error saying so, so `idle-supervisor failed` lists it and `retry` can take it.
A UID that neither FETCH nor SEARCH ever returned was expunged before we saw it: nothing to do.

The replay (replay.py) meets the same server and follows the same rule (settle()).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterable

from ipc import protocol
from tenant_proc.imap.fetching import FetchBroken, busy_delay, connection_broken, fetch_bodies
from tenant_proc.imap.searching import listed, listed_between
from tenant_proc.store.api import SchemaOutdated

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from tenant_proc.mail.mailbox import Mailbox
    from tenant_proc.mail.notice import Notice

SHOWN_UIDS = 20  # a log line names at most this many UIDs


class MissingUids:
    def __init__(self, mailbox: Mailbox, log: logging.LoggerAdapter) -> None:
        self.mailbox = mailbox
        self.log = log
        self.known: dict[int, float] = {}  # uid -> first seen (epoch), this UIDVALIDITY
        self.uidvalidity: int | None = None
        self.durable = True  # False once the store turned out to lack the table (sql/009)
        self.due_at = 0.0  # monotonic: after a handler failure here, wait retry_interval

    # -- the record ------------------------------------------------------------------------

    def load(self, uidvalidity: int) -> None:
        """At every (re)sync of the checkpoint: what an earlier process recorded."""
        spec = self.mailbox.spec
        if self.uidvalidity != uidvalidity:
            self.known = {}  # without the table: what this process noticed, this UIDVALIDITY only
        self.uidvalidity = uidvalidity
        if self.durable:
            try:
                self.known = self.mailbox.store.missing_uids(spec.id, spec.folder, uidvalidity)
            except SchemaOutdated as exc:
                self._not_durable(exc)

    def record(self, uids: Iterable[int]) -> None:
        """Written before the checkpoint may move past these UIDs; a UID keeps its first sighting."""
        new = sorted(u for u in set(uids) if u not in self.known)
        if not new:
            return
        spec, now = self.mailbox.spec, time.time()
        if self.durable:
            try:
                self.mailbox.store.record_missing(spec.id, spec.folder, self._uidvalidity(), new, now)
            except SchemaOutdated as exc:
                self._not_durable(exc)
        self.known.update((u, now) for u in new)
        self.log.warning(
            "uid %s: listed by the server (UID SEARCH) but not returned by FETCH; handing over the "
            "mail after it and asking for it again at every catch-up (recorded failed after %gs)",
            _shown(new), spec.imap.missing_uid_timeout)

    def forget(self, uids: Iterable[int]) -> None:
        gone = sorted(u for u in set(uids) if u in self.known)
        if not gone:
            return
        spec = self.mailbox.spec
        if self.durable:
            try:
                self.mailbox.store.forget_missing(spec.id, spec.folder, self._uidvalidity(), gone)
            except SchemaOutdated as exc:
                self._not_durable(exc)
        for uid in gone:
            del self.known[uid]

    def noticed(self, client: IMAPClient, search: set[int], sizes: dict[int, int],
                last_uid: int) -> int | None:
        """After a survey: UIDs the search listed above last_uid that the FETCH left out are
        recorded; recorded ones it returned now go back to the mailbox's usual path (the
        checkpoint has not passed them). Returns the highest such UID, for the checkpoint to
        pass once everything below it is done.

        The search ran just before the FETCH: mail that arrived in between is in the FETCH
        only. If those late UIDs leave a gap, a UID the server holds back may sit in it (it
        arrived with them): one more search, after the FETCH, tells."""
        back = [u for u in sizes if u in self.known]
        if back:
            self.log.info("uid %s: served again, handing over", _shown(back))
            self.forget(back)
        covered = max(search | {last_uid})
        late = [u for u in sizes if u > covered]
        if late and len(late) < max(late) - covered:
            search = search | listed_between(client, covered + 1, max(late))
        hidden = [u for u in search if u > last_uid and u not in sizes]
        self.record(hidden)
        return max(hidden, default=None)

    # -- asking again ----------------------------------------------------------------------

    def chase(self, client: IMAPClient, notice: Notice) -> None:
        """At every catch-up: ask for each recorded UID the checkpoint has passed."""
        mailbox = self.mailbox
        assert mailbox.checkpoint is not None
        due = [u for u in sorted(self.known) if u <= mailbox.checkpoint.last_uid]
        if not due or time.monotonic() < self.due_at:
            return
        saved_retry = (mailbox.retry_uid, mailbox.retry_at)
        try:
            size_batch = max(mailbox.spec.imap.batch_size, 1)
            for start in range(0, len(due), size_batch):
                self._chase_batch(client, due[start:start + size_batch], notice)
        finally:  # the mailbox's retry bookkeeping is for the UID above the checkpoint
            mailbox.retry_uid, mailbox.retry_at = saved_retry
        if self.due_at > time.monotonic() and mailbox.retry_at is None:
            mailbox.retry_at = self.due_at  # a due "retry" wakes the IDLE/poll loop into a catch-up

    def _chase_batch(self, client: IMAPClient, batch: list[int], notice: Notice) -> None:
        mailbox, imap = self.mailbox, self.mailbox.spec.imap
        try:
            sizes = {uid: int(item[b"RFC822.SIZE"])
                     for uid, item in client.fetch(batch, ["RFC822.SIZE"]).items()
                     if uid in batch and b"RFC822.SIZE" in item}
        except Exception as exc:
            if busy_delay(str(exc))[0]:  # the mailbox's state, as on the mailbox's own path
                mailbox._server_busy(batch[0], str(exc))
            if connection_broken(exc):
                raise  # the session's reconnect deals with it
            sizes = {}  # refused: as not served, the search below decides
        try:
            fetched = fetch_bodies(client, [u for u in batch if u in sizes], sizes,
                                   imap.max_message_bytes)
        except FetchBroken as broken:
            mailbox._fetch_broke(broken.uids[0], broken, notice)
        if fetched.busy is not None:  # quota, incident, throttling: the whole mailbox waits
            mailbox._server_busy(batch[0], fetched.busy[0])
        unserved = []
        for uid in batch:
            mailbox.control.check()
            data: Any = fetched.messages.get(uid)
            if uid in fetched.refused:  # a refusal about this one email: its attempt
                done = mailbox._attempt_failed(uid, None, fetched.refused[uid], notice, wait=False)
            elif data is not None:
                done = mailbox._handle(uid, data, notice, truncated=sizes[uid] > imap.max_message_bytes)
            else:
                unserved.append(uid)
                continue
            if done:
                self.forget([uid])
            else:  # attempts remain: again after retry_interval
                self.due_at = time.monotonic() + imap.retry_interval
        self.settle(client, unserved, notice)

    def settle(self, client: IMAPClient, uids: list[int], notice: Notice) -> None:
        """UIDs at or below the checkpoint the server did not return just now: expunged if UID
        SEARCH no longer lists them, else recorded (if new) and given up after the timeout."""
        if not uids:
            return
        mailbox = self.mailbox
        try:
            still = listed(client, uids)
        except Exception as exc:
            if connection_broken(exc):
                raise
            still = set(uids)  # cannot confirm they are gone: keep asking
        for uid in uids:
            if uid not in still and self._finish(uid, "expunged", None):
                self.log.info("uid %d was expunged before the server returned it", uid)
        kept = [u for u in uids if u in still]
        self.record(kept)
        timeout = mailbox.spec.imap.missing_uid_timeout
        for uid in kept:
            waited = time.time() - self.known[uid]
            if waited >= timeout:
                self._give_up(uid, waited, notice)

    def _give_up(self, uid: int, waited: float, notice: Notice) -> None:
        spec = self.mailbox.spec
        error = (f"the server listed this UID (UID SEARCH) but never returned it in a FETCH "
                 f"for {waited:.0f}s (missing_uid_timeout {spec.imap.missing_uid_timeout:g}s)")
        if self._finish(uid, "failed", error, time.monotonic() - notice.mono):
            control = self.mailbox.control
            control.counters["failed"] += 1
            control.last_error = f"fetch: uid {uid}: {error}"[:200]
            self.log.error("gave up on uid %d: %s", uid, error)

    def _finish(self, uid: int, status: str, error: str | None, latency: float | None = None) -> bool:
        """A done ledger row, then the record goes. False if the UID was done already (a crash
        between its ledger row and forget()): then only the record goes."""
        mailbox = self.mailbox
        spec, uidvalidity = mailbox.spec, self._uidvalidity()
        if mailbox.store.is_done(spec.id, spec.folder, uidvalidity, uid):
            self.forget([uid])
            return False
        mailbox.store.mark_done(spec.id, spec.folder, uidvalidity, uid, None, status, error)
        self.forget([uid])
        mailbox.control.send(protocol.processed(uid, uidvalidity, None, status, latency))
        return True

    # -- helpers ---------------------------------------------------------------------------

    def _uidvalidity(self) -> int:
        checkpoint = self.mailbox.checkpoint
        assert checkpoint is not None
        return checkpoint.uidvalidity

    def _not_durable(self, exc: Exception) -> None:
        self.durable = False
        self.log.warning("%s; run sql/009_missing_uids.sql: until then UIDs the server lists but "
                         "does not return are remembered by this process only (a restart forgets "
                         "them)", exc)


def _shown(uids: list[int]) -> str:
    uids = sorted(uids)
    return ", ".join(map(str, uids[:SHOWN_UIDS])) + (" ..." if len(uids) > SHOWN_UIDS else "")
