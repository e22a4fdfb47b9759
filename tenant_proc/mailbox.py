"""Everything above the checkpoint: fetch in batches, parse, hand over, advance.

The checkpoint moves only after the handler returned (or the email was given up on after
max_attempts), one UID at a time in UID order, so a crash at any point loses nothing and
processes nothing twice.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator

from imapclient import IMAPClient
from imapclient.response_parser import parse_fetch_response

from ipc import protocol
from tenant_proc.control import Control
from tenant_proc.handler_loader import LoadedHandler, PermanentHandlerError
from tenant_proc.message import Envelope, parse_email
from tenant_proc.spec import TenantSpec
from tenant_proc.store_api import Checkpoint, StateStore

# The next UID's first bytes ride along with the size FETCH (never more than max_message_bytes):
# most email is smaller, and is then handled after one round trip instead of two.
PREFETCH_BYTES = 64 * 1024


@dataclass
class Notice:
    """When the tenant noticed new mail: the start of the latency clock."""

    wall: float
    mono: float

    @classmethod
    def now(cls) -> "Notice":
        return cls(time.time(), time.monotonic())


class Mailbox:
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
        self.replay: Any = None  # tenant_proc.replay.Replayer: runs after every catch-up

    # -- checkpoint ----------------------------------------------------------------------

    def sync_checkpoint(self, client: IMAPClient, select_info: dict[bytes, Any]) -> Checkpoint:
        """Load the checkpoint, or create it on first start / after a UIDVALIDITY change."""
        uidvalidity = int(select_info[b"UIDVALIDITY"])
        saved = self.store.load_checkpoint(self.spec.id, self.spec.folder)
        if saved is not None and saved.uidvalidity == uidvalidity:
            self.checkpoint = saved
            return saved
        uidnext = _uidnext(client, self.spec.folder, select_info)
        if saved is not None:
            self.log.warning(
                "UIDVALIDITY of %s changed from %d to %d: restarting from UID %d",
                self.spec.folder, saved.uidvalidity, uidvalidity, uidnext,
            )
            start = uidnext - 1
        else:
            start = self._first_start(client, uidnext)
        self.checkpoint = Checkpoint(uidvalidity, start)
        self.store.save_checkpoint(self.spec.id, self.spec.folder, self.checkpoint)
        self._clear_retry()
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
        if self.replay is not None:  # emails an operator marked for another round
            self.replay.run(client, notice)

    def _catch_up_new(
        self, client: IMAPClient, notice: Notice, on_sent: Callable[[], None] | None
    ) -> None:
        assert self.checkpoint is not None, "sync_checkpoint first"
        # One round trip finds the new UIDs and their sizes (no UID SEARCH first) and, usually,
        # brings the next email along: under load every round trip waits for the server and
        # then for a CPU again.
        prefetch = min(PREFETCH_BYTES, self.spec.imap.max_message_bytes)
        sizes, early = _survey(client, self.checkpoint.last_uid, prefetch, on_sent)
        uids = sorted(sizes)
        if not uids:
            self._clear_retry()
            return
        self.control.set_state("processing")
        for batch in _chunks(uids, self.spec.imap.batch_size):
            if not self._process_batch(client, batch, sizes, early, notice):
                return
            early = {}

    def _process_batch(
        self, client: IMAPClient, batch: list[int], sizes: dict[int, int],
        early: dict[int, dict[bytes, Any]], notice: Notice,
    ) -> bool:
        """False when a retry is pending: later UIDs wait so the checkpoint never skips one."""
        messages = dict(early)
        messages.update(self._fetch(client, [u for u in batch if u not in early], sizes))
        for uid in batch:
            self.control.check()
            if self.retry_uid == uid and self.retry_at is not None and time.monotonic() < self.retry_at:
                return False
            data = messages.get(uid)
            if data is None:
                self.log.debug("uid %d vanished before FETCH; skipping it", uid)
                self._advance(uid)
                continue
            if not self._handle(uid, data, notice):
                return False
        return True

    def _fetch(
        self, client: IMAPClient, batch: list[int], sizes: dict[int, int]
    ) -> dict[int, dict[bytes, Any]]:
        """Bodies with BODY.PEEK (never sets \\Seen); headers only for oversized messages."""
        limit = self.spec.imap.max_message_bytes
        small = [u for u in batch if sizes[u] <= limit]
        large = [u for u in batch if sizes[u] > limit]
        messages: dict[int, dict[bytes, Any]] = {}
        if small:
            messages.update(client.fetch(small, ["BODY.PEEK[]", "INTERNALDATE", "RFC822.SIZE"]))
        if large:
            messages.update(
                client.fetch(large, ["BODY.PEEK[HEADER]", "INTERNALDATE", "RFC822.SIZE"])
            )
        return messages

    def _handle(self, uid: int, data: dict[bytes, Any], notice: Notice) -> bool:
        spec = self.spec
        assert self.checkpoint is not None
        uidvalidity = self.checkpoint.uidvalidity
        previous, attempts = self._begin_attempt(uidvalidity, uid)
        if previous in ("processed", "failed"):
            self._advance(uid)  # finished before a crash the backend could not make atomic
            return True
        redelivered = previous == "handling"
        if redelivered:
            error = f"the tenant process died while handling it (attempt {attempts}/{spec.imap.max_attempts})"
            self.log.warning("uid %d: %s; handing it over again as redelivered", uid, error)
            if attempts >= spec.imap.max_attempts:
                return self._give_up(uid, None, attempts, error, notice)
        truncated = b"BODY[]" not in data
        raw = data.get(b"BODY[]") if not truncated else data.get(b"BODY[HEADER]")
        envelope = Envelope(
            tenant_id=spec.id, folder=spec.folder, uid=uid, uidvalidity=uidvalidity,
            size=int(data.get(b"RFC822.SIZE", 0)), received_at=_epoch(data.get(b"INTERNALDATE")),
            detected_at=notice.wall, truncated=truncated, redelivered=redelivered,
        )
        message_id: str | None = None
        try:
            # Parsing sits inside the try too: a parser bug on one email must count as a
            # failed attempt (and end as "failed"), not crash the process on every restart.
            email = parse_email(raw or b"", envelope)
            message_id = email.message_id
            self.handler(email)
        except Exception as exc:
            return self._handler_failed(uid, message_id, exc, notice)
        latency = time.monotonic() - notice.mono
        self.store.mark_done(spec.id, spec.folder, uidvalidity, uid, email.message_id, "processed")
        self._advance(uid, persist=False)
        self.control.counters["processed"] += 1
        self.log.info("processed uid %d %s in %.3fs", uid, email.message_id, latency)
        self.control.send(protocol.processed(uid, uidvalidity, email.message_id, "processed", latency))
        return True

    def _begin_attempt(self, uidvalidity: int, uid: int) -> tuple[str | None, int]:
        """The UID's previous ledger status and attempts; marks it "handling" where it can."""
        spec = self.spec
        begin = getattr(self.store, "begin_attempt", None)
        if begin is not None:
            return begin(spec.id, spec.folder, uidvalidity, uid)
        done = self.store.is_done(spec.id, spec.folder, uidvalidity, uid)
        return ("processed" if done else None), 0

    def _handler_failed(self, uid: int, message_id: str | None, exc: Exception, notice: Notice) -> bool:
        spec = self.spec
        assert self.checkpoint is not None
        error = f"{type(exc).__name__}: {exc}"[:500]
        attempts = self.store.record_attempt_failure(
            spec.id, spec.folder, self.checkpoint.uidvalidity, uid, message_id, error
        )
        self.log.warning(
            "handler failed on uid %d (attempt %d/%d): %s", uid, attempts, spec.imap.max_attempts, error
        )
        self.control.last_error = f"handler: {error}"[:200]
        # PermanentHandlerError: the handler knows a retry cannot help (webhook: HTTP 400).
        if attempts < spec.imap.max_attempts and not isinstance(exc, PermanentHandlerError):
            self.retry_uid = uid
            self.retry_at = time.monotonic() + spec.imap.retry_interval
            return False
        return self._give_up(uid, message_id, attempts, error, notice)

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
            if persist:
                self.store.save_checkpoint(self.spec.id, self.spec.folder, self.checkpoint)
        if self.retry_uid is not None and uid >= self.retry_uid:
            self._clear_retry()

    def _clear_retry(self) -> None:
        self.retry_uid = None
        self.retry_at = None


def _survey(
    client: IMAPClient, last_uid: int, prefetch: int, on_sent: Callable[[], None] | None = None
) -> tuple[dict[int, int], dict[int, dict[bytes, Any]]]:
    """Sizes of every message above last_uid, and the next UID's email if it is small.

    Two pipelined commands, one round trip:
      UID FETCH last+1:* (RFC822.SIZE)
      UID FETCH last+1 (BODY.PEEK[]<0.prefetch> INTERNALDATE RFC822.SIZE)
    New mail almost always gets UID last+1. The second command asks for at most prefetch
    bytes (<= max_message_bytes): if fewer came back, that is the whole email and needs no
    further FETCH; if not, it is dropped and the email fetched as usual (whole, or headers
    only when oversized). Returns ({uid: size}, {uid: fetch data with b"BODY[]"}).

    imapclient's fetch() cannot send a range with "*" nor pipeline, hence imaplib's command
    and response halves. "n:*" always includes the highest UID even when it is below n, and
    unsolicited FETCH responses (flag changes, keyed by sequence number) may be mixed in:
    keep only UIDs above last_uid that came with a size. Both commands' answers are parsed
    together: a server may interleave them, every line names its UID.
    """
    imap = client._imap
    tags = [imap._command("UID", "FETCH", f"{last_uid + 1}:*", "(RFC822.SIZE)")]
    if prefetch > 0:
        tags.append(imap._command(
            "UID", "FETCH", str(last_uid + 1), f"(BODY.PEEK[]<0.{prefetch}> INTERNALDATE RFC822.SIZE)"
        ))
    if on_sent is not None:
        on_sent()
    for tag in tags:
        typ, data = imap._command_complete("FETCH", tag)
        client._checkok("fetch", typ, data)
    typ, data = imap._untagged_response(typ, data, "FETCH")
    client._checkok("fetch", typ, data)
    response = parse_fetch_response(data, client.normalise_times, True)
    sizes = {
        uid: int(item[b"RFC822.SIZE"])
        for uid, item in response.items()
        if uid > last_uid and b"RFC822.SIZE" in item
    }
    early: dict[int, dict[bytes, Any]] = {}
    item = response.get(last_uid + 1)
    head = item.get(b"BODY[]<0>") if item is not None and last_uid + 1 in sizes else None
    # Shorter than asked: that is all of it (and the server's size agrees it is small).
    if isinstance(head, bytes) and len(head) < prefetch and sizes[last_uid + 1] < prefetch:
        early[last_uid + 1] = {b"BODY[]": head, b"INTERNALDATE": item.get(b"INTERNALDATE"),
                               b"RFC822.SIZE": sizes[last_uid + 1]}
    return sizes, early


def _uidnext(client: IMAPClient, folder: str, select_info: dict[bytes, Any]) -> int:
    if b"UIDNEXT" in select_info:
        return int(select_info[b"UIDNEXT"])
    return int(client.folder_status(folder, ["UIDNEXT"])[b"UIDNEXT"])


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return 0.0


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    size = max(size, 1)
    for start in range(0, len(items), size):
        yield items[start : start + size]
