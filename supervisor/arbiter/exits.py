"""How tenant processes end: reaping exits, killing the hung, stop deadlines, the last SIGKILL.

A mixin of Arbiter (like reconcile.py). Exits are collected with TenantProcess.is_alive()
(our own waitpid on that pid, never waitpid(-1): supervision rule 3); every stop has a
deadline after which SIGKILL follows (rule 9); a quiet tenant's silence is checked against
/proc before it counts as hung (supervisor/children/liveness.py).
"""
from __future__ import annotations

import logging
import random
import signal
import time
from typing import TYPE_CHECKING, Any

from ipc import protocol
from supervisor.children import liveness
from supervisor.children.command_groups import kill_orphaned_group
from supervisor.children.forking import ChildHandle, send_signal
from supervisor.children.hung_checks import HungChecks
from supervisor.children.records import RestartPolicy, State, StopReason, TenantRecord

log = logging.getLogger("supervisor")


class ChildExits:
    # The arbiter's (supervisor/arbiter/arbiter.py): annotations only, nothing defined at runtime.
    records: dict[str, TenantRecord]
    config: Any
    rng: random.Random
    shutting_down: bool
    status_dirty: bool
    hung_checks: HungChecks
    live_children: int

    if TYPE_CHECKING:
        def restart_policy(self) -> RestartPolicy: ...

        def drain_last_words(self, record: TenantRecord, now: float) -> None: ...

        def _unregister(self, obj: Any) -> None: ...

    def reap_children(self, candidates: list[TenantRecord] | None = None) -> None:
        """Collect exited children: the given ones, or (safety net) every tenant."""
        now = time.monotonic()
        policy = self.restart_policy()
        for record in list(candidates if candidates is not None else self.records.values()):
            handle = record.handle
            if handle is None or handle.process.is_alive():  # is_alive() reaps via waitpid
                continue
            exitcode = handle.process.exitcode
            self.drain_last_words(record, now)
            self._kill_command_group(record)
            self._close_handle(handle)
            self.live_children -= 1
            self.status_dirty = True
            reason = record.stop_reason
            record.on_exit(now, exitcode, policy, self.rng, self.shutting_down)
            self._log_exit(record, exitcode, reason)
            if reason is StopReason.REMOVED and record.spec is not None and record.id in self.records:
                if record.state is State.STOPPED:
                    del self.records[record.id]
            elif reason is StopReason.REMOVED and record.spec is None:
                record.state = State.FAILED  # invalid config: shown as failed until fixed

    def _next_due_of(self, records: list[TenantRecord]) -> float:
        due = [r.next_start_at for r in records if r.next_start_at is not None and not r.is_alive()]
        return min(due, default=float("inf"))

    def _log_exit(self, record: TenantRecord, exitcode: int | None, reason: StopReason | None) -> None:
        if reason in (StopReason.SHUTDOWN, StopReason.REMOVED, StopReason.CHANGED) or self.shutting_down:
            log.info("[%s] stopped (exit code %s)", record.name, exitcode)
        elif record.state is State.FAILED:
            retry = self.config.supervisor.failed_backoff
            log.error("[%s] failed: %s; next try in %.0fs or on SIGHUP", record.name,
                      record.last_error, retry)
        else:
            delay = (record.next_start_at or time.monotonic()) - time.monotonic()
            log.warning("[%s] %s; restarting in %.0fs", record.name, record.last_error, delay)

    def _kill_command_group(self, record: TenantRecord) -> None:
        """The kernel killed a dead tenant's command with it, but not what that command
        started in the background: kill its whole process group (reported over IPC)."""
        if record.handle is not None and record.handle.command_group is not None:
            kill_orphaned_group(record.name, record.handle.command_group)
            record.handle.command_group = None

    def _close_handle(self, handle: ChildHandle) -> None:
        if handle.conn_open:  # else _close_pipe unregistered it already (EOF or a bad frame)
            self._unregister(handle.conn)
        self._unregister(handle.process.sentinel)
        try:
            handle.conn.close()
        except OSError:
            pass
        handle.process.join(0)
        handle.process.close()

    def murder_hung(self, now: float) -> None:
        """Look at the tenants whose check is due (supervisor/children/hung_checks.py), not at all."""
        timeout = self.config.supervisor.heartbeat_timeout
        for record in self.hung_checks.pop_due(now):
            self._check_hung(record, now, timeout)
            self.hung_checks.schedule(record, timeout)

    def _check_hung(self, record: TenantRecord, now: float, timeout: float) -> None:
        if record.quiet_for and record.handle is not None and now >= record.next_probe_at:
            reason = self._probe_quiet(record, now, timeout)
            if reason is not None:
                self._kill_hung(record, now, f"silent for {record.silence(now):.0f}s and "
                                             f"{reason}: killed as hung")
                return
        if record.heartbeat_overdue(now, timeout) and record.quiet_silence_left(now, timeout) <= 0:
            self._kill_hung(record, now, f"no heartbeat for {timeout:.0f}s: killed as hung")

    def _probe_quiet(self, record: TenantRecord, now: float, timeout: float) -> str | None:
        """A quiet tenant's /proc check: first after timeout/2 of silence, then every timeout;
        a reason counts only after timeout of silence, as a missing heartbeat would. So a
        stopped or spinning tenant is killed 1-1.5 x timeout after its last beat."""
        silence = record.silence(now) or 0.0
        if silence < timeout / 2:
            record.next_probe_at = now + timeout / 2 - silence
            return None
        record.next_probe_at = now + timeout
        current = liveness.sample(record.handle.process.pid, now)
        reason = liveness.why_not_asleep(record.last_probe, current)
        record.last_probe = current
        return reason if silence > timeout else None

    def _kill_hung(self, record: TenantRecord, now: float, error: str) -> None:
        record.last_error = error
        log.error("[%s] %s", record.name, record.last_error)
        self.stop_tenant(record, StopReason.HUNG, now, self.config.supervisor.kill_timeout,
                         send_stop=False)

    def stop_tenant(self, record: TenantRecord, reason: StopReason, now: float, timeout: float,
                    send_stop: bool = True, told: bool = False) -> None:
        """told: the child heard it already (the shutdown pipe): only the deadline is set."""
        handle = record.handle
        if handle is None:
            return
        record.begin_stop(now, reason, timeout)
        self.status_dirty = True
        if told:
            return
        if send_stop and handle.conn_open:
            handle.send(protocol.stop())
        # SIGTERM too: a child busy in a handler sees the flag as soon as the handler returns.
        send_signal(handle.process.pid, signal.SIGTERM)

    def enforce_stop_deadlines(self, now: float) -> None:
        for record in self.records.values():
            if (record.is_alive() and record.stop_deadline is not None
                    and now >= record.stop_deadline and not record.kill_sent):
                log.warning("[%s] did not stop in time: SIGKILL", record.name)
                send_signal(record.handle.process.pid, signal.SIGKILL)
                record.kill_sent = True

    def kill_survivors(self) -> None:
        """Last resort on the way out: the parent exits last and leaves nothing behind."""
        for record in self.records.values():
            if record.handle is not None and record.handle.process.is_alive():
                send_signal(record.handle.process.pid, signal.SIGKILL)
        for record in self.records.values():
            if record.handle is not None:
                record.handle.process.join(5)
                exitcode = record.handle.process.exitcode
                self.drain_last_words(record, time.monotonic())
                self._kill_command_group(record)
                self._close_handle(record.handle)
                self.live_children -= 1
                record.on_exit(time.monotonic(), exitcode, self.restart_policy(), self.rng, True)
