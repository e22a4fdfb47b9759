"""One IMAP connection at a time: connect, log in, select, catch up, then IDLE or poll.

Network trouble is handled here (backoff, reconnect); problems a restart cannot fix leave as
FatalError so main() exits with the code that tells the supervisor not to fast-retry.
"""
from __future__ import annotations

import logging
import random
import ssl
import time
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.imapclient import _parse_untagged_response

from ipc.poll import readable_fds
from tenant_proc.errors import ConnectionLost, FatalError, suggested_backoff
from tenant_proc.imap.beating_io import beat_while_reading
from tenant_proc.imap.connect import SECURITY_LABELS, open_client
from tenant_proc.mail.mailbox import Mailbox, Notice
from tenant_proc.mail.uidvalidity import changed_on_server
from tenant_proc.process.control import Control, StopRequested
from tenant_proc.process.memory import return_free_memory
from tenant_proc.signin.errors import raise_if_mailbox_refused
from tenant_proc.signin.login import login
from tenant_proc.signin.login_budget import LoginBudget
from tenant_proc.spec import TenantSpec
from tenant_proc.store.api import LeaseLost, StoreError

BACKOFF_START = 1.0
PROBE_TIMEOUT = 15.0  # a live server answers DONE in milliseconds
# The silence that counts as "dead" is dead_after plus this share of it. Dovecot's keepalive
# ("* OK Still here") comes every 2 minutes on a wall-clock grid, exactly the default
# dead_after: the deadline (last byte read + 120 s) and the next keepalive then raced, and
# under load about half the idle tenants lost each round, probing with DONE and catching up
# (five round trips and a survey instead of one read) every 2 minutes (bench/idle_cost.py).
DEAD_AFTER_SLACK = 0.05
NEW_MAIL = (b"EXISTS", b"RECENT")

# imaplib.IMAP4.abort (BYE, EOF) is an IMAPClientError; ssl errors are OSErrors.
RECONNECT_ERRORS = (OSError, IMAPClientError, ConnectionLost, StoreError)


class Session:
    def __init__(self, spec: TenantSpec, control: Control, mailbox: Mailbox, log: logging.LoggerAdapter) -> None:
        self.spec = spec
        self.control = control
        self.mailbox = mailbox
        self.log = log
        self.client: IMAPClient | None = None
        self.idling = False
        self.next_reconcile = 0.0
        self._done_at_last_rest = -1  # -1: the first rest, after connecting, trims too
        self.logins = LoginBudget(spec.imap.max_logins_per_hour)

    def run(self) -> None:
        """Serve until asked to stop (returns) or a FatalError (raised)."""
        backoff = BACKOFF_START
        while True:
            progress = self.mailbox.progress
            try:
                self._connect()
                self._serve()
            except StopRequested:
                self._logout()
                return
            except FatalError:
                self._drop()
                raise
            except LeaseLost:  # another instance runs this company now: leave, do not retry
                self._logout()
                raise
            except RECONNECT_ERRORS as exc:
                self._drop()
                # Only a catch-up that got somewhere earns a fresh backoff: a server that lets
                # us log in and then fails every session must not be re-entered once a second.
                if self.mailbox.progress != progress:
                    backoff = BACKOFF_START
                try:
                    self._back_off(exc, reconnect_delay(backoff, exc))
                except StopRequested:
                    return
                backoff = min(backoff * 2, self.spec.imap.reconnect_backoff_max)

    def _back_off(self, exc: BaseException, delay: float) -> None:
        """BACKOFF -> CONNECTING after a jittered delay; a stop while waiting just returns."""
        control = self.control
        control.check()  # the error may be the stop itself (e.g. a signal during a read)
        control.counters["reconnects"] += 1
        control.last_error = _short_error(exc)
        self.log.warning("%s; reconnecting in %.1fs", control.last_error, delay)
        control.set_state("backoff")
        control.sleep(delay)

    # -- connecting ----------------------------------------------------------------------

    def _connect(self) -> None:
        spec = self.spec
        self._within_login_budget()
        self.control.set_state("connecting")
        self.client = client = open_client(spec, keepalive=self.control.heartbeat_if_due)
        beat_while_reading(client, self.control.heartbeat_if_due)
        self.control.server_spoke()
        self.log.info("connected to %s:%d (%s)", spec.host, spec.port, SECURITY_LABELS[spec.security])
        self.logins.spend()
        login(client, spec)
        self.control.counters["logins"] += 1
        select_info = self._select(client)
        self.control.last_error = None
        self.mailbox.sync_checkpoint(client, select_info)

    def _within_login_budget(self) -> None:
        """Wait (in BACKOFF) until a login fits [imap] max_logins_per_hour."""
        wait = self.logins.wait_needed()
        if wait <= 0:
            return
        control = self.control
        control.last_error = (f"login budget: {self.spec.imap.max_logins_per_hour} logins in the "
                              f"last hour; next in {wait:.0f}s")
        self.log.warning("%s", control.last_error)
        control.set_state("backoff")
        control.sleep(wait)

    def _select(self, client: IMAPClient) -> dict[bytes, Any]:
        # EXAMINE (read-only): processing mail can never change its flags.
        try:
            return client.select_folder(self.spec.folder, readonly=True)
        except IMAPClientError as exc:
            raise_if_mailbox_refused(self.spec, exc)  # Exchange: token fine, no mailbox access
            if not client.folder_exists(self.spec.folder):
                raise FatalError("config", f"folder {self.spec.folder!r} does not exist") from None
            raise

    # -- serving -------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self.client is not None
        self._catch_up(Notice.now())
        if self.client.has_capability("IDLE"):
            self.log.info("IDLE active")
            self._idle_loop()
        else:
            self.log.info("polling every %gs (server has no IDLE)", self.spec.imap.poll_interval)
            self._poll_loop()

    def _catch_up(self, notice: Notice, idle_ending: bool = False) -> None:
        """idle_ending: DONE went out unanswered (_end_idle_early); the first FETCH follows it
        at once and the end of the IDLE is read before that FETCH's answer."""
        assert self.client is not None
        if idle_ending:
            self.mailbox.catch_up(self.client, notice, on_sent=self._read_idle_end)
        else:
            # Forget announcements made before this search: the search itself covers them.
            _announced_meanwhile(self.client)
            self.mailbox.catch_up(self.client, notice)
        self.control.server_spoke()
        self.next_reconcile = time.monotonic() + self.spec.imap.reconcile_interval

    def _poll_loop(self) -> None:
        assert self.client is not None
        interval = self.spec.imap.poll_interval
        # Each tenant polls in a phase of its own: tenants started together (a supervisor
        # start, a server outage) would otherwise poll in the same second forever, one storm
        # for the server and the same delay for every mailbox. The catch-up after connecting
        # has just looked, so the first poll may come at any point of the interval.
        next_poll = first_poll_at(time.monotonic(), interval)
        while True:
            self.control.set_state("polling", mode="poll")
            wake = min(next_poll, self.mailbox.retry_at or next_poll)
            self._rest()
            self.control.wait((), wake - time.monotonic())
            if time.monotonic() < wake:
                continue
            self.client.noop()
            if time.monotonic() >= self.next_reconcile:
                self._check_uidvalidity()
            self._catch_up(Notice.now())
            next_poll = next_poll_at(next_poll, time.monotonic(), interval)

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
        client.idle()
        self.idling = True
        started = time.monotonic()
        self.control.set_state("idle", mode="idle")
        # Mail that arrived while we were busy (FETCH, handler, the IDLE command itself) was
        # announced in answer to those commands, and imaplib filed it away: look there too.
        announced = _announced_meanwhile(client)
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

    def _check_uidvalidity(self) -> None:
        """The periodic reconcile also asks STATUS (UIDVALIDITY UIDNEXT): a folder renumbered
        while we are connected is resynchronised now, not at the next reconnect."""
        client, checkpoint = self.client, self.mailbox.checkpoint
        assert client is not None and checkpoint is not None
        if changed_on_server(client, self.spec.folder, checkpoint.uidvalidity) is not None:
            self.mailbox.sync_checkpoint(client, self._select(client))

    def _rest(self) -> None:
        """About to wait on the server after work (connecting, mail): give the heap it freed
        back to the kernel (tenant_proc/process/memory.py). Not after a wait that found nothing."""
        done = self.control.counters["processed"] + self.control.counters["failed"]
        if done != self._done_at_last_rest:
            self._done_at_last_rest = done
            return_free_memory()

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
        _announced_meanwhile(client)

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

    # -- leaving -------------------------------------------------------------------------

    def _logout(self) -> None:
        """Clean stop: DONE, LOGOUT, each bounded by a short socket timeout."""
        client = self.client
        if client is None:
            return
        try:
            client.socket().settimeout(max(0.1, min(5.0, self.spec.shutdown_timeout / 2)))
            if self.idling:
                client.idle_done()
                self.idling = False
            client.logout()
            self.log.info("logged out")
        except Exception as exc:  # the stop goes on whatever the server does
            self.log.info("logout incomplete: %s", _short_error(exc))
            self._drop()
        self.client = None

    def _drop(self) -> None:
        """Close the socket without talking to the server (it is gone or misbehaving)."""
        if self.client is not None:
            try:
                self.client.shutdown()
            except Exception:
                pass
        self.client = None
        self.idling = False


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


def _announced_meanwhile(client: IMAPClient) -> bool:
    """Pop EXISTS/RECENT that arrived as untagged answers to other commands.

    imaplib keeps untagged responses it was not asked for in untagged_responses; an EXISTS
    that lands during a FETCH or before "+ idling" would otherwise never wake the IDLE loop.
    """
    pending = client._imap.untagged_responses
    return any([pending.pop(key, None) for key in ("EXISTS", "RECENT")])


def _has_new_mail(responses: list[Any]) -> bool:
    return any(len(r) >= 2 and r[1] in NEW_MAIL for r in responses if isinstance(r, tuple))


def reconnect_delay(backoff: float, exc: BaseException, rng: random.Random | None = None) -> float:
    """The jittered wait before the next connect; a server's "Suggested Backoff Time" wins.

    Jitter: many tenants on one server must not reconnect in step. A throttled tenant waits
    at least what the server asked (jitter only upwards), or the next LOGIN is throttled again.
    """
    rng = rng or random
    asked = suggested_backoff(str(exc))
    if asked is not None and asked >= backoff:
        return asked * rng.uniform(1.0, 1.2)
    return backoff * rng.uniform(0.8, 1.2)


def first_poll_at(now: float, interval: float, rng: random.Random | None = None) -> float:
    """A random phase inside the interval (uniform), so pollers started together spread out."""
    return now + (rng or random).uniform(0.0, interval)


def next_poll_at(previous: float, now: float, interval: float) -> float:
    """Keep the phase (a fixed rate from the first poll); after a poll that took longer than
    the interval, wait a whole interval from now instead of polling back to back."""
    due = previous + interval
    return due if due > now else now + interval


def _short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
