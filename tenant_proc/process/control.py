"""The tenant's side of supervision: signals, the parent's pipe, heartbeats, title, waiting.

Signal handlers only record the signal; the wake-up fd makes any wait() return at once, so
the loop notices a stop within one tick whatever it was waiting for.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterable

from ipc import procstat, protocol
from ipc.poll import readable_fds
from tenant_proc.process.title import set_title

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Waiting on the server with nothing to say: heartbeats every idle_heartbeat_interval. Every
# wait in these states has a deadline and every socket call a timeout, so silence here is
# not a hang; the supervisor still checks in /proc that the process sleeps (not stopped, not
# spinning). Any other state (connecting, processing, backoff...) beats every heartbeat_interval.
QUIET_STATES = frozenset({"idle", "polling"})
# Reports queued by send_soon go out together once this many wait, or the oldest waited this
# long (seconds), or anything else is sent: a slow handler's reports are not held back.
QUEUED_REPORTS_MAX = 64
QUEUED_REPORTS_MAX_AGE = 0.1


class StopRequested(Exception):
    """The parent asked us to stop (stop message, signal or pipe EOF)."""


class Control:
    def __init__(
        self, tenant_id: str, name: str, conn: Connection, heartbeat_interval: float,
        shutdown_timeout: float, idle_heartbeat_interval: float | None = None,
        shutdown_fd: int | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.name = name
        self.conn = conn
        self.heartbeat_interval = heartbeat_interval
        self.idle_heartbeat_interval = max(idle_heartbeat_interval or 0.0, heartbeat_interval)
        self.shutdown_timeout = shutdown_timeout
        self.state = "starting"
        self.mode: str | None = None
        self.counters = {"processed": 0, "failed": 0, "reconnects": 0, "logins": 0, "skipped": 0}
        self.last_error: str | None = None
        self.last_server_byte: float | None = None  # monotonic
        self.stop_reason: str | None = None
        self.signals_seen = 0
        self._next_heartbeat = 0.0
        # The parent's `replay` message (after `idle-supervisor retry`): tenant_proc/mail/replay.py.
        self.on_replay: Callable[[], None] | None = None
        self._replays = 0
        self._wake_r, self._wake_w = socket.socketpair()
        # The process group of the command a handler is running (track_process_group): an exit
        # "now" from a signal handler kills it first, as no `finally` of the handler runs then.
        self.process_group: int | None = None
        self._queued: list[dict[str, Any]] = []
        # Asked before every email: Connection.poll(0) builds a selector each call (~24 us
        # here); one poll object kept for the pipe answers in about a microsecond.
        self._parent_poller = select.poll()
        self._parent_poller.register(conn.fileno(), select.POLLIN)
        # The read end of the supervisor's shutdown pipe (supervisor/children/forking.py ShutdownPipe), shared
        # by every tenant: EOF on it is "the supervisor stops", for all of them at once.
        # The same poll object asks about both: no extra system call per email.
        self._shutdown_fd = shutdown_fd
        if shutdown_fd is not None:
            self._parent_poller.register(shutdown_fd, select.POLLIN)
        self._queued_since = 0.0

    # -- bootstrap -----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Replace what we inherited from the supervisor: its handlers must never run here."""
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess (command handler) reaps its own
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Python's default: EPIPE as an exception
        signal.signal(signal.SIGALRM, self._on_deadline)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.signals_seen += 1
        if self.signals_seen > 1:
            # The second signal means "now": the loop may be blocked in a socket call.
            self._exit_now()
        self.request_stop(signal.Signals(signum).name)

    def _on_deadline(self, signum: int, frame: Any) -> None:
        self._exit_now()  # shutdown_timeout passed during a clean stop

    def _exit_now(self) -> None:
        """os._exit, after killing a running command's group: the kernel would kill only its
        leader with us, and with the supervisor gone (its death is why we stop) no one else
        would. Safe against pid reuse: the leader is our child, not reaped yet."""
        if self.process_group is not None:
            try:
                os.killpg(self.process_group, signal.SIGKILL)
            except OSError:
                pass
        os._exit(protocol.EXIT_OK)

    def request_stop(self, reason: str) -> None:
        """Begin a clean stop. Whatever then hangs (server, handler), SIGALRM ends us in time."""
        if self.stop_reason is None:
            self.stop_reason = reason
            signal.setitimer(signal.ITIMER_REAL, max(self.shutdown_timeout, 0.01))

    # -- reporting -----------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        if self._queued:  # in order: a heartbeat's counters already count the queued reports
            self.send_queued()
        if not protocol.send(self.conn, message):
            self.request_stop("parent pipe closed")

    def send_soon(self, message: dict[str, Any]) -> None:
        """Queue a report (`processed` during a backlog); the mailbox sends the queue at the end
        of each batch. Sent one by one, every email woke the parent for a whole loop tick of its
        own: 0.22-0.30 ms of its CPU per email (bench/burst.py), on a machine of two cores
        shared with the server. Written back to back, they are read in one wake-up."""
        if not self._queued:
            self._queued_since = time.monotonic()
        self._queued.append(message)
        if (len(self._queued) >= QUEUED_REPORTS_MAX
                or time.monotonic() - self._queued_since >= QUEUED_REPORTS_MAX_AGE):
            self.send_queued()

    def send_queued(self) -> None:
        queued, self._queued = self._queued, []
        for message in queued:
            if not protocol.send(self.conn, message):
                self.request_stop("parent pipe closed")
                return

    def hello(self) -> None:
        self.send(protocol.hello(self.tenant_id, os.getpid()))

    def track_process_group(self, pgid: int | None) -> None:
        """A handler's process group (or None: it is gone): the supervisor kills it if we die
        first. Its leader's start time goes with it, so a reused pid is never mistaken for it."""
        self.process_group = pgid
        start = None if pgid is None else procstat.start_ticks(pgid)
        self.send(protocol.command_group(pgid, start))

    def set_state(self, state: str, mode: str | None = None) -> None:
        if mode is not None:
            self.mode = mode
        if state == self.state and mode is None:
            return
        self.state = state
        set_title(self.name, state)
        self.heartbeat()

    def heartbeat(self) -> None:
        now = time.monotonic()
        age = None if self.last_server_byte is None else round(now - self.last_server_byte, 3)
        interval = self.heartbeat_interval
        if self.state in QUIET_STATES:
            interval = self.idle_heartbeat_interval
        self.send(protocol.heartbeat(self.state, self.mode, dict(self.counters), self.last_error,
                                     age, quiet_for=interval - self.heartbeat_interval))
        self._next_heartbeat = now + interval

    def heartbeat_if_due(self) -> None:
        if time.monotonic() >= self._next_heartbeat:
            self.heartbeat()

    def _beat_while_awake(self) -> None:
        """Woken by the server while quiet (Dovecot's "* OK Still here" every 2 minutes): beat
        now if half the idle interval has passed, instead of waking again for the timer. With
        idle_heartbeat_interval (150 s) above the server's keepalive period, an idle tenant's
        beats ride on the keepalives and its own timer never fires."""
        if self.state in QUIET_STATES and (
                time.monotonic() >= self._next_heartbeat - self.idle_heartbeat_interval / 2):
            self.heartbeat()

    def server_spoke(self) -> None:
        self.last_server_byte = time.monotonic()

    # -- stopping and waiting ------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def check(self) -> None:
        """Between messages: heartbeat on time, notice a stop. Raises StopRequested."""
        self._drain_parent()
        self.heartbeat_if_due()
        if self.stopping:
            raise StopRequested(self.stop_reason)

    def wait(self, fds: Iterable[Any], timeout: float) -> bool:
        """Wait up to timeout for one of fds, the parent or a signal; True if an fd is ready.

        Heartbeats go out on time meanwhile. Raises StopRequested when asked to stop.
        """
        extra = [fd if isinstance(fd, int) else fd.fileno() for fd in fds]
        deadline = time.monotonic() + max(timeout, 0.0)
        replays = self._replays
        while True:
            self.check()
            if self._replays != replays:
                return False  # the caller's deadlines changed (a replay is due): recompute them
            now = time.monotonic()
            if now >= deadline:
                return False
            slice_ = min(deadline, self._next_heartbeat) - now
            ours = [self._wake_r.fileno(), self.conn.fileno()]
            if self._shutdown_fd is not None:
                ours.append(self._shutdown_fd)
            readable = readable_fds([*ours, *extra], slice_)
            if self._wake_r.fileno() in readable:
                self._drain_wakeup()
            if any(fd in readable for fd in extra):
                self._beat_while_awake()
                self.check()
                return True

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # wait() returns early on a replay message
            self.wait((), end - time.monotonic())

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _drain_parent(self) -> None:
        try:
            while ready := self._parent_poller.poll(0):  # POLLHUP/POLLERR count: receive() reports them
                if self._shutdown_fd is not None and any(fd == self._shutdown_fd for fd, _ in ready):
                    self.request_stop("supervisor shutdown")
                    self._parent_poller.unregister(self._shutdown_fd)  # at EOF it stays readable
                    self._shutdown_fd = None
                    continue  # poll again: the pipe from the parent, if ready, still is
                message = protocol.receive(self.conn)
                if message is not None and message["type"] == "stop":
                    self.request_stop("stop message")
                elif message is not None and message["type"] == "replay":
                    self._replays += 1
                    if self.on_replay is not None:
                        self.on_replay()
        except (EOFError, OSError):
            self.request_stop("parent pipe closed")
