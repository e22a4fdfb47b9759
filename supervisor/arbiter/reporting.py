"""What the arbiter tells the outside: status.json, the live status on the control socket,
systemd's STATUS= line and watchdog pings, and the control socket's command table.

A mixin of Arbiter (like reconcile.py): it reads the arbiter's records and clocks and never
changes a tenant. status.json is still written (other tools read it; it is the fallback when
no supervisor answers); the control socket's `status` is built at the moment it is asked, so
ages are read-time ages and counters are current to the last message received.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from supervisor.children.records import TenantRecord
from supervisor.service import sdnotify
from supervisor.service.control import Command, ControlServer
from supervisor.service.status import build_status, summary_line, write_status

log = logging.getLogger("supervisor")

STATUS_MIN_INTERVAL = 1.0  # status.json: soon after a visible change, else every heartbeat_interval


class StatusReporter:
    # The arbiter's (supervisor/arbiter/arbiter.py): annotations only, nothing defined at runtime.
    records: dict[str, TenantRecord]
    config: Any
    cluster: Any
    state_dir: Path
    started_at_wall: float
    shutting_down: bool
    status_dirty: bool
    signal_queue: list[int]
    selector: Any
    control: ControlServer | None
    next_status: float
    last_status: float
    next_watchdog: float
    watchdog_period: float | None
    last_summary: str

    # ---- the live answer and the control socket ----------------------------------------

    def live_status(self) -> dict[str, Any]:
        """The status as of now: the same fields as status.json."""
        phase = "stopping" if self.shutting_down else "running"
        now = time.monotonic()
        status = build_status(os.getpid(), self.started_at_wall, phase, self.records.values(),
                              now, time.time())
        if self.cluster is not None:
            status["supervisor"]["cluster"] = self.cluster.status(now)
        return status

    def control_commands(self) -> dict[str, Command]:
        """The control socket's commands: a new one is one entry here."""
        return {
            "status": lambda request: self.live_status(),
            "reload": lambda request: self._queue_from_control(signal.SIGHUP, "reload"),
            "stop": lambda request: self._queue_from_control(signal.SIGTERM, "stop"),
        }

    def _queue_from_control(self, signum: int, what: str) -> dict[str, Any]:
        # Exactly what the signal would do, in the same place of the loop (handle_signals).
        log.info("control socket: %s requested", what)
        self.signal_queue.append(signum)
        return {"queued": what, "pid": os.getpid()}

    def open_control(self) -> None:
        try:
            self.control = ControlServer(self.state_dir, self.selector, self.control_commands())
        except OSError as exc:
            # Not fatal: status.json and signals still work, as before the socket existed.
            log.error("control socket unavailable (status falls back to status.json): %s", exc)
            self.control = None

    def close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None

    # ---- status.json -------------------------------------------------------------------

    def write_status_if_due(self, now: float) -> None:
        """At least every heartbeat_interval (the contract); sooner, at most once a second,
        when a tenant's state, counters or error changed. Rewriting it every second for 1,000
        tenants whose heartbeats changed nothing was a large part of the idle cost."""
        if now >= self._next_status_write():
            self.write_status_now()

    def _next_status_write(self) -> float:
        """When status.json is due (monotonic): the loop wakes for it, not only at housekeeping
        (once a second now), so a change shows within STATUS_MIN_INTERVAL as before."""
        if self.status_dirty:
            interval = self.config.supervisor.heartbeat_interval
            return min(self.next_status, self.last_status + min(STATUS_MIN_INTERVAL, interval))
        return self.next_status

    def write_status_now(self) -> None:
        now = time.monotonic()
        self.last_status = now
        self.status_dirty = False
        self.next_status = now + self.config.supervisor.heartbeat_interval
        try:
            write_status(self.state_dir, self.live_status())
        except OSError as exc:
            log.error("cannot write status.json: %s", exc)
        summary = summary_line(self.records.values())
        if summary != self.last_summary:
            self.last_summary = summary
            sdnotify.status(summary)

    # ---- systemd -----------------------------------------------------------------------

    def ping_watchdog(self, now: float) -> None:
        if self.watchdog_period is not None and now >= self.next_watchdog:
            sdnotify.watchdog()
            self.next_watchdog = now + self.watchdog_period
