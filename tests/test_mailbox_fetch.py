"""The mailbox's IMAP commands per catch-up, against a fake server that answers like Dovecot.

No SEARCH: one `UID FETCH last+1:* (RFC822.SIZE)` finds the new UIDs and their sizes; bodies
follow in batches of batch_size, oversized mail headers only.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tenant_proc.mailbox import Mailbox, Notice
from tenant_proc.spec import ImapSettings, Secret, StateSpec, TenantSpec
from tenant_proc.store import SqliteStore


class WireImap:
    """Answers the two commands the mailbox sends and records them as they went out."""

    normalise_times = True

    def __init__(self, messages: dict[int, bytes]) -> None:
        self.messages = messages
        self.sent: list[str] = []
        self._imap = self  # the imaplib halves the size FETCH is sent with live here too
        self._args: tuple[str, ...] = ()

    def _command(self, *args: str) -> str:
        self.sent.append(" ".join(args))
        self._args = args
        return "A1"

    def _command_complete(self, name: str, tag: str) -> tuple[str, list[bytes]]:
        return "OK", [b"FETCH completed"]

    def _untagged_response(self, typ: str, data: Any, name: str) -> tuple[str, list[bytes]]:
        assert self._args[:2] == ("UID", "FETCH") and self._args[3] == "(RFC822.SIZE)"
        low = int(self._args[2].split(":")[0])
        ordered = sorted(self.messages)
        found = [u for u in ordered if u >= low] or ordered[-1:]  # "n:*" includes the highest UID
        lines = [f"{ordered.index(u) + 1} (UID {u} RFC822.SIZE {len(self.messages[u])})".encode()
                 for u in found]
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
        raise AssertionError("catch_up must not SEARCH: the size FETCH finds the new UIDs")


class _Control:
    counters = {"processed": 0, "failed": 0}
    last_error = None

    def set_state(self, *args: Any, **kwargs: Any) -> None:
        pass

    def check(self) -> None:
        pass

    def send(self, message: dict[str, Any]) -> None:
        pass


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def message(uid: int, body: bytes = b"hello") -> bytes:
    return f"Subject: m{uid}\r\nMessage-ID: <{uid}@t>\r\n\r\n".encode() + body


def make_mailbox(tmp_path: Path, **imap: Any) -> tuple[Mailbox, list[Any]]:
    spec = TenantSpec(id="t", name="T", host="h", port=993, security="tls", username="u",
                      password=Secret("x"), imap=ImapSettings(**imap),
                      state=StateSpec(state_dir=str(tmp_path)))
    handled: list[Any] = []
    store = SqliteStore(tmp_path / "checkpoints.sqlite3")
    mailbox = Mailbox(spec, store, handled.append, _Control(), _Log())  # type: ignore[arg-type]
    return mailbox, handled


def test_one_size_fetch_then_bodies_no_search(tmp_path: Path) -> None:
    imap = WireImap({1: message(1), 2: message(2)})
    mailbox, handled = make_mailbox(tmp_path)
    mailbox.sync_checkpoint(imap, {b"UIDVALIDITY": 7, b"UIDNEXT": 2})  # type: ignore[arg-type]
    imap.sent.clear()
    mailbox.catch_up(imap, Notice.now())  # type: ignore[arg-type]
    assert imap.sent == ["UID FETCH 2:* (RFC822.SIZE)",
                         "UID FETCH 2 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)"]
    assert [e.uid for e in handled] == [2]


def test_highest_uid_below_n_is_not_handled_again(tmp_path: Path) -> None:
    """`UID FETCH 6:*` on a mailbox whose highest UID is 5 answers with UID 5: not new mail."""
    imap = WireImap({4: message(4), 5: message(5)})
    mailbox, handled = make_mailbox(tmp_path)
    mailbox.sync_checkpoint(imap, {b"UIDVALIDITY": 7, b"UIDNEXT": 6})  # type: ignore[arg-type]
    imap.sent.clear()
    mailbox.catch_up(imap, Notice.now())  # type: ignore[arg-type]
    assert imap.sent == ["UID FETCH 6:* (RFC822.SIZE)"]
    assert handled == []
    assert mailbox.checkpoint is not None and mailbox.checkpoint.last_uid == 5


def test_oversized_is_fetched_headers_only_and_batches_stay_bounded(tmp_path: Path) -> None:
    msgs = {uid: message(uid) for uid in range(1, 8)}
    msgs[3] = message(3, b"x" * 5000)
    imap = WireImap(msgs)
    mailbox, handled = make_mailbox(tmp_path, batch_size=3, max_message_bytes=1000)
    mailbox.sync_checkpoint(imap, {b"UIDVALIDITY": 7, b"UIDNEXT": 1})  # type: ignore[arg-type]
    imap.sent.clear()
    mailbox.catch_up(imap, Notice.now())  # type: ignore[arg-type]
    assert imap.sent == [
        "UID FETCH 1:* (RFC822.SIZE)",
        "UID FETCH 1,2 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",
        "UID FETCH 3 (BODY.PEEK[HEADER] INTERNALDATE RFC822.SIZE)",
        "UID FETCH 4,5,6 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",
        "UID FETCH 7 (BODY.PEEK[] INTERNALDATE RFC822.SIZE)",
    ]
    assert [e.uid for e in handled] == list(range(1, 8))
    assert [e.uid for e in handled if e.truncated] == [3]
