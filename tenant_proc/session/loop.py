"""One IMAP connection at a time: connect, log in, select, catch up, then IDLE or poll.

Network trouble is handled here (backoff, reconnect); problems a restart cannot fix leave as
FatalError so main() exits with the code that tells the supervisor not to fast-retry. Waiting
in IDLE is the IdleLoop half (idle.py); when to try again, timing.py.
"""
from __future__ import annotations

import imaplib
import logging
import time
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from tenant_proc.errors import (ConnectionLost, FatalError, ServerBusy, names_server_state,
                                suggested_backoff)
from tenant_proc.imap.beating_io import beat_while_reading
from tenant_proc.imap.connect import SECURITY_LABELS, open_client
from tenant_proc.mail.mailbox import Mailbox
from tenant_proc.mail.notice import Notice
from tenant_proc.mail.uidvalidity import changed_on_server
from tenant_proc.process.control import Control, StopRequested
from tenant_proc.process.memory import return_free_memory
from tenant_proc.session.idle import IdleLoop, announced_meanwhile
from tenant_proc.session.timing import (backoff_earned, busy_wait, first_poll_at, next_poll_at,
                                        reconnect_delay)
from tenant_proc.signin.errors import MailboxNotConnected, not_connected, raise_if_mailbox_refused
from tenant_proc.signin.login import login
from tenant_proc.signin.login_budget import LoginBudget
from tenant_proc.signin.refusals import NotConnectedStreak
from tenant_proc.spec import TenantSpec
from tenant_proc.store.api import LeaseLost, StoreError

BACKOFF_START = 1.0

# imaplib.IMAP4.abort (BYE, EOF) is an IMAPClientError; ssl errors are OSErrors.
RECONNECT_ERRORS = (OSError, IMAPClientError, ConnectionLost, StoreError)


class Session(IdleLoop):
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
        self.not_connected = NotConnectedStreak()
        self.serving_since: float | None = None  # monotonic: IDLE or polling began on this connection

    def run(self) -> None:
        """Serve until asked to stop (returns) or a FatalError (raised)."""
        imap = self.spec.imap
        backoff = BACKOFF_START
        busy: float | None = None  # the last wait for a server that refused the mailbox
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
                # Only a session that got somewhere earns a fresh backoff: a server that lets
                # us log in and then fails every session (right after an empty catch-up too)
                # must not be re-entered once a second.
                if backoff_earned(self.mailbox.progress != progress, self._served_for(), imap):
                    backoff, busy = BACKOFF_START, None
                # The mailbox refused for now (no email is charged): the time the server asked
                # for, else a wait that doubles from retry_interval up to 15 minutes.
                busy_delay = None
                if isinstance(exc, ServerBusy) and suggested_backoff(str(exc)) is None:
                    busy = busy_delay = busy_wait(busy, imap.retry_interval)
                try:
                    self._back_off(exc, reconnect_delay(backoff, exc, busy=busy_delay))
                except StopRequested:
                    return
                backoff = min(backoff * 2, imap.reconnect_backoff_max)

    def _served_for(self) -> float:
        """Seconds this connection has been in IDLE or polling (0: it never got there)."""
        return 0.0 if self.serving_since is None else time.monotonic() - self.serving_since

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
        self.serving_since = None
        self._within_login_budget()
        self.control.set_state("connecting")
        self.client = client = open_client(spec, keepalive=self.control.heartbeat_if_due)
        beat_while_reading(client, self.control.heartbeat_if_due)
        self.control.server_spoke()
        self.log.info("connected to %s:%d (%s)", spec.host, spec.port, SECURITY_LABELS[spec.security])
        self.logins.spend()
        try:
            login(client, spec)
            self.control.counters["logins"] += 1
            select_info = self._select(client)
        except MailboxNotConnected:
            # Passing (a SaaS with many connections) or a missing permission: only an OAuth
            # tenant has a remedy to name, and only once it persists (refusals.py).
            if self.not_connected.refused() and spec.auth != "password":
                raise not_connected(spec) from None
            raise
        self.not_connected.connected()
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
            raise_if_mailbox_refused(self.spec, exc)  # Exchange: "authenticated but not connected"
            # Busy, throttled, or the connection is gone: asking LIST now would only lose the
            # server's words (Exchange closes right after a throttle).
            if isinstance(exc, imaplib.IMAP4.abort):
                raise
            if names_server_state(str(exc)):
                raise ConnectionLost(f"EXAMINE {self.spec.folder} refused: {' '.join(str(exc).split())}") from None
            if not client.folder_exists(self.spec.folder):
                raise FatalError("config", f"folder {self.spec.folder!r} does not exist") from None
            raise

    # -- serving -------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self.client is not None
        self._catch_up(Notice.now())
        self.serving_since = time.monotonic()
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
            announced_meanwhile(self.client)
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


def _short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
