"""IMAP IDLE (RFC 2177) for the session: wait for the server's word, leave IDLE for the right
reason, and read what the server said meanwhile.

A mixin of Session (loop.py), as the arbiter's halves are of the Arbiter: it reads and sets the
session's client and state. Leaving IDLE for mail pipelines DONE with the first FETCH (a round
trip saved per reaction); leaving it after a long silence makes DONE the liveness probe.
"""
from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.imapclient import _parse_untagged_response

from ipc.poll import readable_fds
from tenant_proc.errors import ConnectionLost
from tenant_proc.mail.mailbox import Mailbox
from tenant_proc.mail.notice import Notice
from tenant_proc.process.control import Control
from tenant_proc.spec import TenantSpec

PROBE_TIMEOUT = 15.0  # a live server answers DONE in milliseconds
# The silence that counts as "dead" is dead_after plus this share of it. Dovecot's keepalive
# ("* OK Still here") comes every 2 minutes on a wall-clock grid, exactly the default
# dead_after: the deadline (last byte read + 120 s) and the next keepalive then raced, and
# under load about half the idle tenants lost each round, probing with DONE and catching up
# (five round trips and a survey instead of one read) every 2 minutes (bench/idle_cost.py).
DEAD_AFTER_SLACK = 0.05
NEW_MAIL = (b"EXISTS", b"RECENT")
# Untagged lines a server may send between IDLE and its continuation (Exchange: `* n EXISTS`
# before `+ IDLE accepted`); more than this and it is not answering IDLE at all.
MAX_LINES_BEFORE_CONTINUATION = 1000


class IdleLoop:
    # The session's (tenant_proc/session/loop.py): annotations only, nothing defined at runtime.
    spec: TenantSpec
    control: Control
    mailbox: Mailbox
    log: logging.LoggerAdapter
    client: IMAPClient | None
    idling: bool
    next_reconcile: float
    # and its methods _rest(), _check_uidvalidity() and _catch_up(notice, idle_ending)

    def _idle_loop(self) -> None:
        while True:
            reason, notice = self._idle_once()
            if reason == "reconcile":
                self._check_uidvalidity()
            if reason != "reissue":
                self._catch_up(notice, idle_ending=reason not in ("dead", "reconcile"))

    def _idle_once(self) -> tuple[str, Notice]:
        """IDLE until there is a reason to leave it; returns (reason, when mail was noticed)."""
        client = self.client
        assert client is not None
        start_idle(client)
        self.idling = True
        started = time.monotonic()
        self.control.set_state("idle", mode="idle")
        # Mail that arrived while we were busy (FETCH, handler, the IDLE command itself) was
        # announced in answer to those commands, and imaplib filed it away: look there too.
        announced = announced_meanwhile(client)
        notice = Notice.now() if _has_new_mail(self._read_pending()) or announced else None
        if notice is None:
            self._rest()
        reason = "mail"
        while notice is None:
            reason, due = self._next_idle_deadline(started)
            now = time.monotonic()
            if now >= due:
                break
            if self.control.wait([client.socket()], due - now) and _has_new_mail(self._read_pending()):
                notice, reason = Notice.now(), "mail"
        if reason in ("reissue", "dead", "reconcile"):
            self._leave_idle(probe=reason == "dead")
        else:
            self._end_idle_early()
        return reason, notice or Notice.now()

    def _next_idle_deadline(self, started: float) -> tuple[str, float]:
        imap = self.spec.imap
        last_byte = self.control.last_server_byte or started
        deadlines = [
            ("reissue", started + imap.idle_timeout),
            ("dead", last_byte + imap.dead_after * (1 + DEAD_AFTER_SLACK)),
            ("reconcile", self.next_reconcile),
        ]
        if self.mailbox.retry_at is not None:
            deadlines.append(("retry", self.mailbox.retry_at))
        return min(deadlines, key=lambda item: item[1])

    def _leave_idle(self, probe: bool) -> None:
        """DONE. After a long silence this doubles as the liveness probe: no answer, reconnect."""
        client = self.client
        assert client is not None
        if probe:
            self.log.debug("no data from the server for %gs: probing", self.spec.imap.dead_after)
            client.socket().settimeout(min(PROBE_TIMEOUT, self.spec.imap.command_timeout))
        client.idle_done()
        self.idling = False
        self.control.server_spoke()
        client.socket().settimeout(self.spec.imap.command_timeout)

    def _end_idle_early(self) -> None:
        """DONE without waiting for the server's answer: a catch-up follows at once.

        Pipelining the first FETCH behind DONE (RFC 3501 5.5) saves a round trip on every
        reaction; under load each round trip waits for the server and then for a CPU again.
        The IDLE's tagged answer is read by _read_idle_end before the FETCH's answer. Not for
        the liveness probe: there DONE alone must be answered in time.
        """
        client = self.client
        assert client is not None
        client.socket().settimeout(self.spec.imap.command_timeout)
        client._imap.send(b"DONE\r\n")
        self.idling = False

    def _read_idle_end(self) -> None:
        """Read up to the IDLE's tagged answer (it precedes the pipelined FETCH's answers).

        What the server announced before it is covered by that FETCH: forget it, as
        _catch_up does before its first command in the unpipelined case.
        """
        client = self.client
        assert client is not None
        tag = client._idle_tag
        tagged = client._imap.tagged_commands
        while tagged.get(tag) is None:
            client._imap._get_response()  # untagged lines are filed in untagged_responses
        typ, data = tagged.pop(tag)
        client._checkok("idle", typ, data)
        self.control.server_spoke()
        announced_meanwhile(client)

    def _read_pending(self) -> list[Any]:
        """Read every complete line the server has sent while idling.

        imaplib reads through a buffered file, so a line can sit in that buffer (or in the TLS
        layer) while the socket itself is not readable; idle_check() would leave it there until
        the next timeout. Unlike idle_check() this also tells EOF apart from "nothing yet".
        """
        client = self.client
        assert client is not None
        responses: list[Any] = []
        while _line_waiting(client):
            line = client._imap._get_line()  # blocking, bounded by the socket's read timeout
            self.control.server_spoke()
            response = _parse_untagged_response(line)
            if response and response[0] == b"BYE":
                raise ConnectionLost(f"server said BYE: {response[1].decode('utf-8', 'replace')}")
            responses.append(response)
        return responses


def start_idle(client: IMAPClient) -> None:
    """IDLE, up to the server's continuation; untagged data before it is filed as any other.

    imapclient's idle() raises "Unexpected IDLE response" on anything but the continuation, but
    Outlook/Exchange may announce new mail first (`* 3 EXISTS` then `+ IDLE accepted, awaiting
    DONE command.`, php-imap#258): every IDLE that met new mail cost a reconnect. imaplib files
    such lines in untagged_responses, where announced_meanwhile() finds the EXISTS: new mail to
    catch up, on the same connection.
    """
    imap = client._imap
    tag = client._idle_tag = imap._command("IDLE")
    for _ in range(MAX_LINES_BEFORE_CONTINUATION):
        if imap._get_response() is None:  # imaplib's sign of the continuation
            return
        answer = imap.tagged_commands.get(tag)
        if answer is not None:  # refused (NO/BAD), no IDLE to wait in
            imap.tagged_commands.pop(tag, None)
            raise IMAPClientError(f"IDLE refused: {_words(answer)}")
        bye = imap.untagged_responses.get("BYE")
        if bye:
            raise ConnectionLost(f"server said BYE: {_words(bye)}")
    raise ConnectionLost(f"no IDLE continuation after {MAX_LINES_BEFORE_CONTINUATION} lines")


def _words(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(_words(v) for v in value if v is not None)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _line_waiting(client: IMAPClient) -> bool:
    """True if a line is buffered or arriving; ConnectionLost on EOF. Never blocks."""
    sock = client.socket()
    readable = bool(readable_fds([sock.fileno()], 0))
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        data = client._imap.file.peek(1)  # buffered bytes, else one non-blocking read
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    finally:
        sock.settimeout(timeout)
    if data:
        return True
    if readable:  # readable yet nothing to read: the server closed the connection
        raise ConnectionLost("server closed the connection")
    return False


def announced_meanwhile(client: IMAPClient) -> bool:
    """Pop EXISTS/RECENT that arrived as untagged answers to other commands.

    imaplib keeps untagged responses it was not asked for in untagged_responses; an EXISTS
    that lands during a FETCH or before "+ idling" would otherwise never wake the IDLE loop.
    """
    pending = client._imap.untagged_responses
    return any([pending.pop(key, None) for key in ("EXISTS", "RECENT")])


def _has_new_mail(responses: list[Any]) -> bool:
    return any(len(r) >= 2 and r[1] in NEW_MAIL for r in responses if isinstance(r, tuple))
