"""A hypothesis property of the checkpoint logic (issue 4): whatever mix of new mail, handler
failures, crashes, restarts, reconnects, UIDVALIDITY changes and UIDs the server lists but does
not return for a while (Exchange, issue 21), no email is lost and none is handled twice.

The mailbox logic (tenant_proc/mail/mailbox.py) runs against an in-memory IMAP folder (FakeImap)
and a real SQLite store; a crash is a BaseException raised in the handler or between it and the
ledger, after which the process "restarts": the store is reopened and the checkpoint resynced.
"""
from __future__ import annotations

import sqlite3
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenant_proc.mail.mailbox import Mailbox
from tenant_proc.mail.notice import Notice
from tenant_proc.spec import ImapSettings, Secret, StateSpec, TenantSpec
from tenant_proc.store.sqlite import SqliteStore
from tests.imap.test_throttle_and_policy import _FakeControl, _NullLog


class Crash(BaseException):
    """SIGKILL stand-in: not an Exception, so no handler-failure path can swallow it."""


class FakeImap:
    """The parts of IMAPClient the mailbox uses, over an in-memory folder."""

    def add(self, kind: str) -> int:
        """kind "hidden": a good email the server lists but keeps out of FETCH answers (Exchange)
        until the next "reveal"."""
        uid = self.next_uid
        self.next_uid += 1
        if kind == "hidden":
            self.hidden.add(uid)
        self.messages[uid] = (f"Subject: {kind} {uid}\r\nMessage-ID: <{uid}.{self.uidvalidity}@x>\r\n"
                              f"\r\n{kind}\r\n").encode()
        return uid

    def renumber(self) -> None:
        """A UIDVALIDITY change: the same messages, new UIDs."""
        bodies = list(self.messages.values())
        self.uidvalidity += 1
        self.messages = {i + 1: b for i, b in enumerate(bodies)}
        self.next_uid = len(bodies) + 1

    def select_info(self) -> dict[bytes, Any]:
        return {b"UIDVALIDITY": self.uidvalidity, b"UIDNEXT": self.next_uid}

    normalise_times = True

    def __init__(self) -> None:
        self.uidvalidity = 1000
        self.messages: dict[int, bytes] = {}
        self.hidden: set[int] = set()  # listed by SEARCH, left out of every FETCH answer
        # Mail that arrives just after the next survey's SEARCH ran, before its FETCH: in the
        # FETCH's answer only (and, hidden, in neither).
        self.arriving: list[str] = []
        self.arrived: set[int] = set()
        self.next_uid = 1
        self._imap = _FakeImaplib(self)

    def fetch_lines(self, uid_set: str, items: str) -> list[Any]:
        """`UID FETCH n:* (RFC822.SIZE)` or `UID FETCH n (BODY.PEEK[]<0.N> ...)` as imaplib
        hands back the untagged lines."""
        seqs = {u: i + 1 for i, u in enumerate(sorted(self.messages))}
        if uid_set.endswith(":*"):
            found = [u for u in self.listed(uid_set) if u not in self.hidden]
            return [f"{seqs[u]} (UID {u} RFC822.SIZE {len(self.messages[u])})".encode() for u in found]
        uid, limit = int(uid_set), int(items.split("<0.")[1].split(">")[0])
        if uid not in self.messages or uid in self.hidden:
            return []
        body = self.messages[uid]
        head = body[:limit]
        return [(f"{seqs[uid]} (UID {uid} RFC822.SIZE {len(body)} BODY[]<0> {{{len(head)}}}".encode(), head),
                b")"]

    def listed(self, uid_set: str) -> list[int]:
        """UID SEARCH UID n:* (or a,b,c or a:b): hidden UIDs included."""
        if uid_set.endswith(":*"):
            low = int(uid_set.split(":")[0])
            found = [u for u in sorted(self.messages) if u >= low]
            return found or ([max(self.messages)] if self.messages else [])  # "n:*" semantics
        wanted: set[int] = set()
        for part in uid_set.split(","):
            low, _, high = part.partition(":")
            wanted |= set(range(int(low), int(high or low) + 1))
        return sorted(wanted & set(self.messages))

    def search(self, criteria: list[str]) -> list[int]:
        assert criteria[0] == "UID", criteria
        return self.listed(criteria[1])

    def _checkok(self, command: str, typ: str, data: Any) -> None:
        assert typ == "OK"

    def fetch(self, uids: list[int], items: list[str]) -> dict[int, dict[bytes, Any]]:
        out = {}
        for uid in uids:
            if uid in self.messages and uid not in self.hidden:
                body = self.messages[uid]
                out[uid] = {b"RFC822.SIZE": len(body), b"BODY[]": body,
                            b"INTERNALDATE": datetime.now(timezone.utc)}
        return out


class _FakeImaplib:
    """The imaplib halves the mailbox sends its pipelined FETCHes with."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.pending: list[tuple[str, ...]] = []

    def _command(self, *args: str) -> str:
        assert args[:2] in (("UID", "FETCH"), ("UID", "SEARCH")), args
        if args[1] == "SEARCH":  # the server runs it now: its answer is what exists now
            args = (*args, " ".join(map(str, self.owner.listed(args[3]))))
            owner = self.owner
            owner.arrived |= {owner.add(kind) for kind in owner.arriving}
            owner.arriving = []
        self.pending.append(args)
        return f"A{len(self.pending)}"

    def _command_complete(self, name: str, tag: str) -> tuple[str, list[bytes]]:
        return "OK", [b"done"]

    def _untagged_response(self, typ: str, data: Any, name: str) -> tuple[str, list[Any]]:
        mine = [args for args in self.pending if args[1] == name]
        self.pending = [args for args in self.pending if args[1] != name]
        if name == "SEARCH":
            return typ, [args[4].encode() for args in mine]
        return typ, [line for args in mine for line in self.owner.fetch_lines(args[2], args[3])]


class PropertyWorld:
    """One tenant's mailbox logic driven against FakeImap and a real SQLite store."""

    MAX_ATTEMPTS = 3

    def __init__(self, directory: Path) -> None:
        self.db_path = directory / "checkpoints.sqlite3"
        self.imap = FakeImap()
        self.spec = TenantSpec(id="t", name="T", host="h", port=993, security="tls", username="u",
                               password=Secret("x"), imap=ImapSettings(max_attempts=self.MAX_ATTEMPTS,
                                                                       retry_interval=0.0, batch_size=3,
                                                                       on_uidvalidity_change="skip_to_new"),
                               state=StateSpec(state_dir=str(directory)))
        self.ok_calls: Counter[tuple[int, int]] = Counter()
        self.fail_calls: Counter[tuple[int, int]] = Counter()
        self.crash_after: Counter[tuple[int, int]] = Counter()
        self.crash_in: Counter[tuple[int, int]] = Counter()
        self.finished_seen: set[tuple[int, int]] = set()
        self.flaky_failed: set[tuple[int, int]] = set()
        self.crash_in_handler = False
        self.crash_before_mark = False
        self.interrupted: set[tuple[int, int]] = set()  # a crash hit while its handler ran
        self.last_checkpoint: tuple[int, int] | None = None
        self.store: SqliteStore | None = None
        self.start()

    # -- a tenant process ------------------------------------------------------------------

    def start(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = SqliteStore(self.db_path)
        world = self

        class Store(SqliteStore):
            def mark_done(self, tenant_id, folder, uidvalidity, uid, message_id, status, error=None):
                if status == "processed" and world.crash_before_mark:
                    world.crash_before_mark = False
                    world.crash_after[(uidvalidity, uid)] += 1
                    world.interrupted.add((uidvalidity, uid))
                    raise Crash("killed between handler return and mark_done")
                super().mark_done(tenant_id, folder, uidvalidity, uid, message_id, status, error)

            def finish_then_begin(self, tenant_id, folder, uidvalidity, finished, uid):
                # During a batch the processed row is written with the next UID's mark: a
                # crash before that joint commit leaves the finished email 'handling'.
                if world.crash_before_mark:
                    world.crash_before_mark = False
                    world.crash_after[(uidvalidity, finished[0])] += 1
                    world.interrupted.add((uidvalidity, finished[0]))
                    raise Crash("killed between handler return and the joint commit")
                return super().finish_then_begin(tenant_id, folder, uidvalidity, finished, uid)

        self.store.__class__ = Store
        self.mailbox = Mailbox(self.spec, self.store, self.handle, _FakeControl(), _NullLog())  # type: ignore[arg-type]
        self.reconnect()

    def reconnect(self) -> None:
        self.mailbox.sync_checkpoint(self.imap, self.imap.select_info())  # type: ignore[arg-type]
        self.check_checkpoint()

    def handle(self, email: Any) -> None:
        key = (email.uidvalidity, email.uid)
        checkpoint = self.store.load_checkpoint("t", "INBOX")
        assert checkpoint is not None
        # Never handle anything at or below the checkpoint (but a UID the server listed and did
        # not return, recorded before the checkpoint passed it), never anything already finished.
        assert (checkpoint.uidvalidity != email.uidvalidity or email.uid > checkpoint.last_uid
                or email.uid in self.store.missing_uids("t", "INBOX", email.uidvalidity))
        assert key not in self.finished_seen
        assert not self.store.is_done("t", "INBOX", *key)
        # Redelivered exactly when an earlier attempt was cut short by a crash.
        assert email.redelivered == (key in self.interrupted), (key, email.redelivered)
        self.interrupted.discard(key)
        if self.crash_in_handler:
            self.crash_in_handler = False
            self.interrupted.add(key)
            self.crash_in[key] += 1
            raise Crash("killed inside the handler")
        if email.subject.startswith("poison") or (email.subject.startswith("flaky")
                                                  and key not in self.flaky_failed):
            self.flaky_failed.add(key)
            self.fail_calls[key] += 1
            raise ValueError(f"cannot handle {key}")
        self.ok_calls[key] += 1

    def catch_up(self) -> None:
        try:
            self.mailbox.catch_up(self.imap, Notice.now())  # type: ignore[arg-type]
        except Crash:
            self.start()  # the supervisor restarts the process: reopen, resync
        self.check_checkpoint()

    # -- invariants ------------------------------------------------------------------------

    def ledger(self) -> dict[tuple[int, int], tuple[str, int]]:
        db = sqlite3.connect(self.db_path)
        try:
            rows = db.execute("SELECT uidvalidity, uid, status, attempts FROM ledger").fetchall()
        finally:
            db.close()
        return {(uv, uid): (status, attempts) for uv, uid, status, attempts in rows}

    def check_checkpoint(self) -> None:
        checkpoint = self.store.load_checkpoint("t", "INBOX")
        assert checkpoint is not None
        if self.last_checkpoint and self.last_checkpoint[0] == checkpoint.uidvalidity:
            assert checkpoint.last_uid >= self.last_checkpoint[1], "checkpoint went backwards"
        self.last_checkpoint = tuple(checkpoint)  # type: ignore[assignment]
        for key, (status, _) in self.ledger().items():
            if status in ("processed", "failed"):
                self.finished_seen.add(key)

    def check_final(self, expected_uids: set[int]) -> None:
        ledger = self.ledger()
        for key, n in self.ok_calls.items():
            assert n <= 1 + self.crash_after[key], f"{key} handled {n} times"
        for key, (status, attempts) in ledger.items():
            if status == "failed":
                # handler exceptions and process deaths while handling both count as attempts
                tries = self.fail_calls[key] + self.crash_in[key] + self.crash_after[key]
                assert attempts == self.MAX_ATTEMPTS == tries, (key, attempts, tries)
            if status == "processed":
                assert self.ok_calls[key] >= 1
        for key, n in self.fail_calls.items():
            assert n <= self.MAX_ATTEMPTS
        uv = self.imap.uidvalidity
        for uid in expected_uids:  # liveness: everything that arrived after the last resync
            assert ledger.get((uv, uid), ("missing",))[0] in ("processed", "failed"), (uv, uid)
        assert self.store.missing_uids("t", "INBOX", uv) == {}  # every recorded UID came back


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("mail"), st.lists(st.sampled_from(["ok", "ok", "ok", "flaky", "poison", "hidden"]),
                                             min_size=1, max_size=5)),
        st.just(("catch_up",)),
        st.just(("crash_in_handler",)),
        st.just(("crash_before_mark",)),
        st.just(("restart",)),
        st.just(("reconnect",)),
        st.just(("uidvalidity",)),
        st.just(("reveal",)),
        st.tuples(st.just("mail_during_survey"), st.lists(st.sampled_from(["ok", "hidden"]),
                                                          min_size=2, max_size=4)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_checkpoint_property_no_loss_no_repeat(ops: list[tuple[Any, ...]]):
    with tempfile.TemporaryDirectory() as tmp:
        world = PropertyWorld(Path(tmp))
        since_resync: set[int] = set()
        for op in ops:
            kind = op[0]
            if kind == "mail":
                since_resync |= {world.imap.add(k) for k in op[1]}
            elif kind == "catch_up":
                world.catch_up()
            elif kind == "crash_in_handler":
                world.crash_in_handler = True
            elif kind == "crash_before_mark":
                world.crash_before_mark = True
            elif kind == "restart":
                world.start()
            elif kind == "reconnect":
                world.reconnect()
            elif kind == "uidvalidity":
                # New UIDs for old mail: by design restart from UIDNEXT, the old ones are not redone.
                world.imap.renumber()
                world.imap.hidden, world.imap.arrived, world.imap.arriving = set(), set(), []
                since_resync = set()
                world.reconnect()
            elif kind == "mail_during_survey":  # arrives between the next SEARCH and its FETCH
                world.imap.arriving = list(op[1])
            elif kind == "reveal":  # the server serves what it kept out
                world.imap.hidden = set()
        world.crash_in_handler = world.crash_before_mark = False
        world.imap.hidden = set()  # served at last: every recorded UID is handed over
        world.imap.arriving = []
        since_resync |= world.imap.arrived
        for _ in range(len(world.imap.messages) * PropertyWorld.MAX_ATTEMPTS + 2):
            world.catch_up()
        world.check_final(since_resync)
        world.store.close()
