"""The mailbox's IMAP commands per catch-up, against a fake server that answers like Dovecot.

One round trip finds the new mail: `UID SEARCH UID last+1:*` (what the server lists, held against
what it returns: tenant_proc/mail/missing.py) pipelined with `UID FETCH last+1:* (RFC822.SIZE)`
(the new UIDs and their sizes) and the next UID's first bytes; bodies follow in batches of
batch_size, oversized mail headers only.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tenant_proc.mail.mailbox import Mailbox
from tenant_proc.mail.notice import Notice
from tenant_proc.spec import ImapSettings, Secret, StateSpec, TenantSpec
from tenant_proc.store.sqlite import SqliteStore


class WireImap:
    """Answers the two commands the mailbox sends and records them as they went out."""

    normalise_times = True

    def __init__(self, messages: dict[int, bytes]) -> None:
        self.messages = messages
        self.sent: list[str] = []
        self._imap = self  # the imaplib halves the size FETCH is sent with live here too
        self._pending: list[tuple[str, ...]] = []
        self.bytes_fetched: dict[int, int] = {}

    def _command(self, *args: str) -> str:
        self.sent.append(" ".join(args))
        self._pending.append(args)
        return f"A{len(self._pending)}"

    def _command_complete(self, name: str, tag: str) -> tuple[str, list[bytes]]:
        return "OK", [b"FETCH completed"]

    def _untagged_response(self, typ: str, data: Any, name: str) -> tuple[str, list[Any]]:
        ordered = sorted(self.messages)
        if name == "SEARCH":  # UID SEARCH UID n:*, as "n:*" includes the highest UID
            searches = [a for a in self._pending if a[:2] == ("UID", "SEARCH")]
            self._pending = [a for a in self._pending if a not in searches]
            low = int(searches[0][3].split(":")[0])
            found = [u for u in ordered if u >= low] or ordered[-1:]
            return typ, [" ".join(map(str, found)).encode()]
        lines: list[Any] = []
        for args in [a for a in self._pending if a[:2] == ("UID", "FETCH")]:
            if args[2].endswith(":*"):
                assert args[3] == "(RFC822.SIZE)"
                low = int(args[2].split(":")[0])
                found = [u for u in ordered if u >= low] or ordered[-1:]  # "n:*" includes the highest UID
                lines += [f"{ordered.index(u) + 1} (UID {u} RFC822.SIZE {len(self.messages[u])})".encode()
                          for u in found]
            else:  # the next UID's first bytes: UID FETCH n (BODY.PEEK[]<0.N> INTERNALDATE RFC822.SIZE)
                uid, limit = int(args[2]), int(args[3].split("<0.")[1].split(">")[0])
                if uid in self.messages:
                    body = self.messages[uid]
                    self.bytes_fetched[uid] = self.bytes_fetched.get(uid, 0) + min(limit, len(body))
                    head = body[:limit]
                    first = (f"{ordered.index(uid) + 1} (UID {uid} RFC822.SIZE {len(body)} "
                             f"BODY[]<0> {{{len(head)}}}")
                    lines += [(first.encode(), head), b")"]
        self._pending = [a for a in self._pending if a[:2] != ("UID", "FETCH")]
        # An unsolicited flag change (keyed by sequence number, no size) may ride along.
        return typ, lines + [b"1 (FLAGS (\\Seen))"]

    def _checkok(self, command: str, typ: str, data: Any) -> None:
        assert typ == "OK"

    def fetch(self, uids: list[int], items: list[str]) -> dict[int, dict[bytes, Any]]:
        self.sent.append(f"UID FETCH {','.join(map(str, uids))} ({' '.join(items)})")
        out: dict[int, dict[bytes, Any]] = {}
        for uid in uids:
            raw = self.messages[uid]
            row: dict[bytes, Any] = {b"RFC822.SIZE": len(raw), b"INTERNALDATE": datetime.now(timezone.utc)}
            if "BODY.PEEK[]" in items:
                row[b"BODY[]"] = raw
            else:
                row[b"BODY[HEADER]"] = raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            out[uid] = row
        return out

    def search(self, criteria: list[str]) -> list[int]:  # pragma: no cover - must not be used
        raise AssertionError("catch_up must not SEARCH on its own: the search rides with the survey")


class _Control:
    counters = {"processed": 0, "failed": 0}
    last_error = None

    def set_state(self, *args: Any, **kwargs: Any) -> None:
        pass

    def check(self) -> None:
        pass

    def send(self, message: dict[str, Any]) -> None:
        pass

    send_soon = send

    def send_queued(self) -> None:
        pass


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def message(uid: int, body: bytes = b"hello") -> bytes:
    return f"Subject: m{uid}\r\nMessage-ID: <{uid}@t>\r\n\r\n".encode() + body


def catch_up_once(tmp_path: Path, messages: dict[int, bytes], uidnext: int,
                  **imap: Any) -> tuple[WireImap, Mailbox, list[Any]]:
    """A mailbox whose checkpoint stands just below uidnext catches up once on these messages;
    imap.sent holds the commands of that catch-up only."""
    spec = TenantSpec(id="t", name="T", host="h", port=993, security="tls", username="u",
                      password=Secret("x"), imap=ImapSettings(**imap),
                      state=StateSpec(state_dir=str(tmp_path)))
    handled: list[Any] = []
    store = SqliteStore(tmp_path / "checkpoints.sqlite3")
    mailbox = Mailbox(spec, store, handled.append, _Control(), _Log())  # type: ignore[arg-type]
    wire = WireImap(messages)
    mailbox.sync_checkpoint(wire, {b"UIDVALIDITY": 7, b"UIDNEXT": uidnext})  # type: ignore[arg-type]
    wire.sent.clear()
    mailbox.catch_up(wire, Notice.now())  # type: ignore[arg-type]
    return wire, mailbox, handled


PREFETCH = "(BODY.PEEK[]<0.65536> INTERNALDATE RFC822.SIZE)"


def test_one_new_small_email_takes_one_round_trip(tmp_path: Path) -> None:
    """The search, the size FETCH and the next UID's first bytes go out together, and a small
    email needs nothing more."""
    imap, mailbox, handled = catch_up_once(tmp_path, {1: message(1), 2: message(2)}, 2)
    assert imap.sent == ["UID SEARCH UID 2:*", "UID FETCH 2:* (RFC822.SIZE)", f"UID FETCH 2 {PREFETCH}"]
    assert [(e.uid, e.truncated, e.size) for e in handled] == [(2, False, len(message(2)))]


def test_highest_uid_below_n_is_not_handled_again(tmp_path: Path) -> None:
    """`UID FETCH 6:*` on a mailbox whose highest UID is 5 answers with UID 5: not new mail."""
    imap, mailbox, handled = catch_up_once(tmp_path, {4: message(4), 5: message(5)}, 6)
    assert imap.sent == ["UID SEARCH UID 6:*", "UID FETCH 6:* (RFC822.SIZE)", f"UID FETCH 6 {PREFETCH}"]
    assert handled == []
    assert mailbox.checkpoint is not None and mailbox.checkpoint.last_uid == 5


def test_oversized_next_email_is_handed_over_headers_only(tmp_path: Path) -> None:
    """The prefetch never asks for more than max_message_bytes, and an email it did not get
    whole is fetched again: headers only when oversized."""
    imap, mailbox, handled = catch_up_once(tmp_path, {1: message(1, b"x" * 5000), 2: message(2)}, 1,
                                           max_message_bytes=1000)
    assert imap.sent == [
        "UID SEARCH UID 1:*",
        "UID FETCH 1:* (RFC822.SIZE)",
        "UID FETCH 1 (BODY.PEEK[]<0.1000> INTERNALDATE RFC822.SIZE)",
        "UID FETCH 2 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",
        "UID FETCH 1 (BODY.PEEK[HEADER] INTERNALDATE RFC822.SIZE)",
    ]
    assert imap.bytes_fetched == {1: 1000}
    assert [(e.uid, e.truncated) for e in handled] == [(1, True), (2, False)]
    assert handled[0].size > 5000 and handled[0].subject == "m1"


def test_email_of_exactly_the_prefetch_size_is_fetched_again_whole(tmp_path: Path) -> None:
    """A prefix as long as asked may be cut: only a shorter one counts as the whole email."""
    raw = message(1)
    imap, mailbox, handled = catch_up_once(tmp_path, {1: raw}, 1, max_message_bytes=len(raw))
    assert imap.sent[3:] == ["UID FETCH 1 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)"]
    assert [(e.uid, e.truncated) for e in handled] == [(1, False)]


def test_many_new_emails_go_in_bounded_batches(tmp_path: Path) -> None:
    msgs = {uid: message(uid) for uid in range(1, 9)}
    msgs[3] = message(3, b"x" * 5000)
    imap, mailbox, handled = catch_up_once(tmp_path, msgs, 1, batch_size=3, max_message_bytes=1000)
    assert imap.sent == [
        "UID SEARCH UID 1:*",
        "UID FETCH 1:* (RFC822.SIZE)",
        "UID FETCH 1 (BODY.PEEK[]<0.1000> INTERNALDATE RFC822.SIZE)",
        "UID FETCH 2 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",  # 1 came whole with the sizes
        "UID FETCH 3 (BODY.PEEK[HEADER] INTERNALDATE RFC822.SIZE)",
        "UID FETCH 4,5,6 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",
        "UID FETCH 7,8 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",
    ]
    assert [e.uid for e in handled] == list(range(1, 9))
    assert [e.uid for e in handled if e.truncated] == [3]


def test_a_batch_is_capped_by_bytes_as_well_as_by_count(tmp_path: Path) -> None:
    """batch_size large emails are not one huge FETCH: a batch also stops at max_batch_bytes
    (an email larger than that alone still goes, on its own)."""
    msgs = {uid: message(uid, b"x" * 3000) for uid in range(1, 7)}
    msgs[5] = message(5, b"x" * 9000)
    imap, mailbox, handled = catch_up_once(tmp_path, msgs, 1, batch_size=100, max_batch_bytes=7000,
                                           max_message_bytes=20_000)
    assert imap.sent[3:] == [
        "UID FETCH 2 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",  # batch 1,2: 1 came with the sizes
        "UID FETCH 3,4 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",
        "UID FETCH 5 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",
        "UID FETCH 6 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",
    ]
    assert [e.uid for e in handled] == list(range(1, 7))
