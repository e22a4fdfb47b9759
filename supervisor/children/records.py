"""Pure supervision logic: per-tenant state machine, restart policy, reload diff.

Nothing here forks, signals or sleeps; every method takes `now` (a monotonic reading) so the
whole lifecycle is testable in microseconds. The arbiter owns the processes and calls these
transitions; each transition is commented supervisord-style (`# BACKOFF -> STARTING`).
"""
from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from ipc.protocol import EXIT_AUTH, EXIT_CONFIG, EXIT_OK
from tenant_proc.spec import SKIP_CLASSES, TenantSpec

# A child may not ask for more quiet than this, whatever its message says.
MAX_QUIET = 3600.0


class State(str, enum.Enum):
    STARTING = "starting"  # forked, no heartbeat yet
    RUNNING = "running"  # heartbeats arriving; the child reports its own finer state
    BACKOFF = "backoff"  # crashed, waiting to restart
    STOPPING = "stopping"  # asked to stop; killed at stop_deadline
    FAILED = "failed"  # auth/config error or crash loop: long backoff, or a fix + SIGHUP
    STOPPED = "stopped"  # not running and not due to run


class StopReason(str, enum.Enum):
    SHUTDOWN = "shutdown"
    REMOVED = "removed"
    CHANGED = "changed"
    HUNG = "hung"


# Emails `[imap] skip` kept from the handler: all of them, and per class.
SKIPPED_COUNTERS = tuple(f"skipped_{name}" for name in SKIP_CLASSES)
COUNTER_NAMES = ("processed", "failed", "reconnects", "logins",
                 # handler latency (any handler) and the webhook handler's outcomes
                 "handler_calls", "handler_ms", "webhook_attempts", "webhook_retries",
                 "webhook_2xx", "webhook_3xx", "webhook_4xx", "webhook_5xx", "webhook_errors",
                 "skipped", *SKIPPED_COUNTERS)
# Heartbeat values that are a current reading, not a running count: taken as they come, never
# added across restarts. failed_in_ledger: this tenant's emails in the ledger as `failed` now.
GAUGE_NAMES = ("failed_in_ledger",)


@dataclass(frozen=True)
class RestartPolicy:
    backoff: float = 60.0
    jitter: float = 0.1
    failed_backoff: float = 900.0
    max_restarts: int = 5
    window: float = 600.0

    def crash_delay(self, rng: random.Random) -> float:
        """Jittered so that a server outage that killed every child is not a login storm."""
        spread = self.backoff * self.jitter
        return max(0.0, self.backoff + rng.uniform(-spread, spread))

    def too_many_crashes(self, crash_times: deque[float], now: float) -> bool:
        """OTP-style restart intensity: more than max_restarts within window."""
        while crash_times and now - crash_times[0] > self.window:
            crash_times.popleft()
        return len(crash_times) > self.max_restarts


@dataclass
class TenantRecord:
    """Everything the supervisor knows about one tenant, across restarts of its process."""

    id: str
    name: str
    spec: TenantSpec | None  # None: the tenant's config is invalid (config_error says why)
    config_error: str | None = None
    state: State = State.STOPPED
    handle: Any = None  # the arbiter's ChildHandle while a process exists
    pid: int | None = None
    started_at: float | None = None
    last_heartbeat: float | None = None
    next_start_at: float | None = None
    stop_deadline: float | None = None
    stop_reason: StopReason | None = None
    kill_sent: bool = False
    pending_spec: TenantSpec | None = None  # CHANGED: start this one once the old process is gone
    child_state: str | None = None
    mode: str | None = None
    last_error: str | None = None
    restarts: int = 0
    starts: int = 0
    crash_times: deque[float] = field(default_factory=deque)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    _counter_base: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    gauges: dict[str, int] = field(default_factory=dict)
    server_idle_age: float | None = None
    # The last heartbeat's promise: the next may come this many seconds later than usual
    # (a quiet tenant, see supervisor/children/liveness.py), while /proc says it sleeps.
    quiet_for: float = 0.0
    next_probe_at: float = 0.0
    last_probe: Any = None  # liveness.ProcSample
    hung_check_at: float = float("inf")  # its entry in the arbiter's HungChecks heap

    # ---- transitions -------------------------------------------------------------------

    def schedule_start(self, now: float) -> None:
        # STOPPED/FAILED/BACKOFF -> (due now)
        self.next_start_at = now

    def mark_started(self, now: float, pid: int, handle: Any) -> None:
        # BACKOFF/STOPPED/FAILED -> STARTING
        if self.starts:
            self.restarts += 1
        self.starts += 1
        self.state = State.STARTING
        self.pid, self.handle = pid, handle
        self.started_at = now
        self.last_heartbeat = None
        self.quiet_for = 0.0
        self.last_probe = None
        self.next_start_at = None
        self.stop_deadline = None
        self.stop_reason = None
        self.kill_sent = False
        self.child_state = "starting"

    def on_heartbeat(self, now: float, message: Mapping[str, Any]) -> None:
        # STARTING -> RUNNING on the first heartbeat; STOPPING stays STOPPING
        self.last_heartbeat = now
        if self.state is State.STARTING:
            self.state = State.RUNNING
        state = message.get("state")
        if isinstance(state, str):
            self.child_state = state
        mode = message.get("mode")
        if mode in ("idle", "poll"):
            self.mode = mode
        error = message.get("last_error")
        if error is None or isinstance(error, str):
            self.last_error = error[:500] if error else None  # the child's word is current
        age = message.get("server_idle_age")
        self.server_idle_age = float(age) if isinstance(age, (int, float)) else None
        quiet = message.get("quiet_for")
        self.quiet_for = min(float(quiet), MAX_QUIET) if isinstance(quiet, (int, float)) and quiet > 0 else 0.0
        self.last_probe = None
        counters = message.get("counters")
        if isinstance(counters, dict):
            for name in COUNTER_NAMES:
                value = counters.get(name)
                if isinstance(value, int) and value >= 0:
                    self.counters[name] = self._counter_base[name] + value
            for name in GAUGE_NAMES:
                value = counters.get(name)
                if isinstance(value, int) and value >= 0:
                    self.gauges[name] = value

    def on_fatal(self, kind: str, reason: str) -> None:
        self.last_error = f"{kind}: {reason}"[:500]

    def begin_stop(self, now: float, reason: StopReason, deadline: float) -> None:
        # STARTING/RUNNING -> STOPPING
        self.state = State.STOPPING
        self.stop_reason = reason
        self.stop_deadline = now + deadline
        self.kill_sent = False

    def on_exit(self, now: float, exitcode: int | None, policy: RestartPolicy,
                rng: random.Random, shutting_down: bool) -> None:
        """The process is gone (reaped). Decide what comes next."""
        self._counter_base = dict(self.counters)
        self.handle = None
        self.pid = None
        reason = self.stop_reason
        self.stop_reason = None
        self.stop_deadline = None
        if shutting_down or reason in (StopReason.SHUTDOWN, StopReason.REMOVED):
            # STOPPING -> STOPPED
            self.state = State.STOPPED
            self.next_start_at = None
            return
        if reason is StopReason.CHANGED:
            # STOPPING -> (start the new spec at once)
            if self.pending_spec is not None:
                self.spec, self.pending_spec = self.pending_spec, None
                self.name = self.spec.name
            self.state = State.STOPPED
            self.next_start_at = now
            return
        if exitcode in (EXIT_AUTH, EXIT_CONFIG):
            # RUNNING -> FAILED: a restart cannot fix wrong credentials or a bad config
            self.state = State.FAILED
            self.next_start_at = now + policy.failed_backoff
            if not self.last_error:
                self.last_error = "authentication failed" if exitcode == EXIT_AUTH else "config error"
            return
        self.crash_times.append(now)
        if reason is not StopReason.HUNG:
            self.last_error = _describe_exit(exitcode) if exitcode != EXIT_OK else "exited unexpectedly"
        if policy.too_many_crashes(self.crash_times, now):
            # RUNNING -> FAILED: crash loop
            self.state = State.FAILED
            self.next_start_at = now + policy.failed_backoff
            self.last_error = (f"{len(self.crash_times)} crashes within {policy.window:.0f}s; "
                               f"last: {self.last_error}")
            return
        # RUNNING -> BACKOFF
        self.state = State.BACKOFF
        self.next_start_at = now + policy.crash_delay(rng)

    def retry_failed_now(self, now: float) -> None:
        """SIGHUP: an operator may have fixed the password or the server; try again at once."""
        if self.state is State.FAILED and self.spec is not None:
            # FAILED -> (due now)
            self.crash_times.clear()
            self.next_start_at = now

    # ---- views -------------------------------------------------------------------------

    def is_alive(self) -> bool:
        return self.handle is not None

    def display_state(self) -> str:
        """The status.json state: the child's own state while it runs, else ours."""
        if self.state is State.RUNNING and self.child_state:
            return self.child_state
        if self.state is State.STOPPING:
            return self.child_state or "starting"
        return self.state.value

    def heartbeat_overdue(self, now: float, timeout: float) -> bool:
        """Silent longer than timeout (a quiet tenant may still be fine: quiet_silence_left)."""
        silence = self.silence(now)
        return silence is not None and silence > timeout

    def quiet_silence_left(self, now: float, timeout: float) -> float:
        """Seconds this tenant may still stay silent on its quiet promise (<= 0: none left)."""
        silence = self.silence(now)
        if silence is None or not self.quiet_for:
            return 0.0
        return timeout + self.quiet_for - silence

    def silence(self, now: float) -> float | None:
        if self.state not in (State.STARTING, State.RUNNING):
            return None
        last = self.last_heartbeat if self.last_heartbeat is not None else self.started_at
        return None if last is None else now - last


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exited (unknown status)"
    if exitcode < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"crashed with exit code {exitcode}"


@dataclass(frozen=True)
class TenantDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]


def diff_tenants(active: Mapping[str, TenantSpec | None],
                 wanted: Mapping[str, TenantSpec | None]) -> TenantDiff:
    """supervisord's diff_to_active: compare normalised specs by id.

    A spec of None stands for a tenant whose config is invalid; going from invalid to valid
    (or back) counts as changed.
    """
    added = tuple(sorted(set(wanted) - set(active)))
    removed = tuple(sorted(set(active) - set(wanted)))
    both = sorted(set(active) & set(wanted))
    changed = tuple(t for t in both if active[t] != wanted[t])
    unchanged = tuple(t for t in both if active[t] == wanted[t])
    return TenantDiff(added=added, removed=removed, changed=changed, unchanged=unchanged)
