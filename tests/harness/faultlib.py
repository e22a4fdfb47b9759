"""Helpers shared by the fault and bad-input tests: fast mail injection and exactly-once checks."""
from __future__ import annotations

import imaplib
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from tests.servers.imap.dovecot import Dovecot


class Appender:
    """One logged-in IMAP connection per user, reused: APPEND costs ~10 ms instead of a login."""

    def __init__(self, dovecot: Dovecot, users: Iterable[str]) -> None:
        self.conns: dict[str, imaplib.IMAP4] = {}
        self.locks: dict[str, threading.Lock] = {}
        for user in users:
            conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
            conn.login(user, dovecot.users[user])
            self.conns[user], self.locks[user] = conn, threading.Lock()

    def append(self, user: str, message: bytes) -> None:
        with self.locks[user]:
            typ, data = self.conns[user].append("INBOX", None, None, message)
        assert typ == "OK", data

    def close(self) -> None:
        for conn in self.conns.values():
            try:
                conn.logout()
            except (OSError, imaplib.IMAP4.error):
                pass


def maildir_deliver(dovecot: Dovecot, user: str, message: bytes) -> None:
    """Deliver as an MTA writing the Maildir would: works while the IMAP server is down.

    tmp/ then rename into new/ (the Maildir protocol), owned like Dovecot's own files.
    """
    maildir = dovecot.mail_dir / user / "Maildir"
    assert (maildir / "new").is_dir(), f"{user} has no Maildir yet (log in or deliver once first)"
    name = f"{time.time():.6f}.{uuid.uuid4().hex}.faults,S={len(message)}"
    tmp = maildir / "tmp" / name
    tmp.write_bytes(message)
    if os.geteuid() == 0:
        shutil.chown(tmp, "nobody", "nogroup")
    os.rename(tmp, maildir / "new" / name)


def assert_exactly_once(emails: list[dict[str, Any]], expected: dict[str, set[str]]) -> None:
    """Every expected subject handled for its tenant, and no (tenant, uidvalidity, uid) twice."""
    keys = Counter((e["tenant_id"], e["uidvalidity"], e["uid"]) for e in emails)
    twice = {k: n for k, n in keys.items() if n > 1}
    assert not twice, f"handled more than once: {sorted(twice.items())[:20]}"
    got: dict[str, Counter[str]] = {}
    for e in emails:
        got.setdefault(e["tenant_id"], Counter())[e["subject"]] += 1
    for tenant, subjects in expected.items():
        seen = got.get(tenant, Counter())
        missing = subjects - set(seen)
        assert not missing, f"{tenant}: {len(missing)} lost, e.g. {sorted(missing)[:5]}"
        dup = [s for s in subjects if seen[s] > 1]
        assert not dup, f"{tenant}: subjects handled twice: {dup[:5]}"


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll predicate until true; returns the seconds it took. Bounded, with a clear failure."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def write_spy(directory: Path) -> Path:
    """A sitecustomize that records every IPC frame (both directions) to $IPC_SPY_FILE.

    Put `directory` first on PYTHONPATH of the supervisor: the patch is in place before the
    first fork, so every tenant process records what it sends too.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('IPC_SPY_FILE'):\n"
        "    from ipc import protocol\n"
        "    _encode = protocol.encode\n"
        "    def encode(message):\n"
        "        data = _encode(message)\n"
        "        with open(os.environ['IPC_SPY_FILE'], 'ab') as fh:\n"
        "            fh.write(data + b'\\n')\n"
        "        return data\n"
        "    protocol.encode = encode\n"
    )
    return directory
