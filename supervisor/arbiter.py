"""The arbiter: one single-threaded loop that owns every tenant process.

One tick: wait on every child pipe, every process sentinel and the signal wake-up socket
(bounded timeout), then drain signals, read messages, reap, check heartbeats and stop
deadlines, refresh tenants when due, start what is due, write status, ping systemd.

Signal handlers only queue the signal number; set_wakeup_fd makes the wait return at once.
Everything else (logging, forking, killing, reloading) happens here, in the loop.
"""
from __future__ import annotations

import gc
import logging
import os
import random
import selectors
import signal
import socket
import time
from pathlib import Path
from typing import Any

from ipc import protocol
from supervisor import liveness, sdnotify
from supervisor.cluster import make_cluster
from supervisor.config import Config, ConfigError, load_config
from supervisor.forking import ChildHandle, fork_tenant, reap_orphans, send_signal
from supervisor.metrics import LatencyHistogram, MetricsError, MetricsServer
from supervisor.pidfile import PidFile
from supervisor.reconcile import TenantReconciler
from supervisor.status import build_status, summary_line, write_status
from supervisor.tenants import RestartPolicy, State, StopReason, TenantRecord
from tenant_proc import signin
from tenant_proc.connect import preload_ssl_contexts
from tenant_proc.handler_loader import HandlerError, resolve_target

log = logging.getLogger("supervisor")

MAX_WAIT = 1.0  # the loop never sleeps longer than this (issue contract)
START_BATCH = 25  # forks per tick: a thousand tenants start staggered, not as one storm
MESSAGES_PER_CHILD_PER_TICK = 64  # one chatty child cannot starve the loop
# Scans over every tenant (hung check, stop deadlines, due starts) run at most this often, or
# at once after a signal or when a start or stop deadline is due (an exited child is reaped at
# once, on its own). An O(n) scan per wake-up was most of the idle cost once; four scans a
# second of 1,000 tenants still were most of what an idle supervisor spent, and a 30 s
# heartbeat_timeout needs no finer resolution than a second (a shorter one gets timeout/8).
HOUSEKEEPING_PERIOD = 1.0
SHUTDOWN_HOUSEKEEPING_PERIOD = 0.1  # stop deadlines while stopping
# Exits are seen through each child's sentinel in the epoll set; the full is_alive() sweep is
# only a safety net. At 1,000 tenants one sweep is 1,000 waitpid calls:
# run every housekeeping period it was most of an idle supervisor's CPU (bench/idle_cost.py).
REAP_SWEEP_PERIOD = 5.0
STATUS_MIN_INTERVAL = 1.0  # status.json: soon after a visible change, else every heartbeat_interval


class Arbiter(TenantReconciler):
    def __init__(self, config_path: Path | None, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.state_dir = Path(config.supervisor.state_dir)
        self.records: dict[str, TenantRecord] = {}
        self.rng = random.Random()
        self.pidfile = PidFile(self.state_dir)
        self.signal_queue: list[int] = []
        self.shutting_down = False
        self.ready_sent = False
        self.started_at_wall = time.time()
        self.next_refresh = 0.0
        self.next_status = 0.0
        self.last_status = 0.0
        self.next_watchdog = 0.0
        self.watchdog_period = sdnotify.watchdog_interval()
        self.last_summary = ""
        self.latency = LatencyHistogram()
        self.metrics: MetricsServer | None = None
        self.is_pid1 = os.getpid() == 1  # in a container: orphans re-parented to us are ours to reap
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        # One epoll set for the whole run: children are registered at spawn and removed at
        # reap, instead of building and polling a list of 2n+1 objects on every tick.
        self.selector = selectors.DefaultSelector()
        self.next_housekeeping = 0.0
        self.next_reap_sweep = 0.0
        self.status_dirty = True
        self._registered_fixed: set[Any] = set()
        self.cluster = make_cluster(config)  # None unless [cluster] enabled (README: several machines)

    # ---- lifecycle ---------------------------------------------------------------------

    def run(self) -> int:
        self.initialize()
        try:
            while not self.finished():
                self.tick()
        finally:
            self.cleanup()
        log.info("supervisor stopped")
        return 0

    def initialize(self) -> None:
        try:
            resolve_target(self.config.handler.target)  # refuse to start on an unusable handler
        except HandlerError as exc:
            raise ConfigError(str(exc)) from None
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.pidfile.acquire()
        sdnotify.forget_notify_socket()  # children must never inherit NOTIFY_SOCKET
        if self.config.metrics.listen:
            try:
                self.metrics = MetricsServer(self.config.metrics.listen,
                                             lambda: list(self.records.values()), self.latency)
            except MetricsError as exc:
                self.pidfile.release()
                raise ConfigError(str(exc)) from None
        self._install_signals()
        policy = self.restart_policy()
        log.info("supervisor started (pid %d, config %s, restart backoff %.0fs)",
                 os.getpid(), self.config.path, policy.backoff)
        self.apply_tenants(initial=True)
        self.write_status_now()

    def finished(self) -> bool:
        return self.shutting_down and not any(r.is_alive() for r in self.records.values())

    def cleanup(self) -> None:
        self.kill_survivors()
        if self.cluster is not None:
            self.cluster.leave()  # every child is gone: hand every lease back at once
        if self.metrics is not None:
            self.metrics.close()
        self.write_status_now()
        self.pidfile.release()
        signal.set_wakeup_fd(-1)

    # ---- one tick ----------------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        self._register_fixed()
        events = self.selector.select(self._wait_timeout(now))
        ready_set = {key.fileobj for key, _ in events}
        exited = [key.data for key, _ in events
                  if key.data is not None and key.fileobj == key.data.handle.process.sentinel]
        self._drain_wakeup(ready_set)
        if self.signal_queue:
            self.next_housekeeping = 0.0  # act on these at once, not at the next period
        self.handle_signals()
        if self.metrics is not None and self.metrics in ready_set:
            self.metrics.serve_ready()
        self.read_messages(ready_set, [key.data for key, _ in events if key.data is not None])
        if exited:
            # Reap exactly the children that exited (O(exits), not O(tenants) per exit: a
            # thousand tenants stopping at once must not cost a million waitpid calls).
            self.reap_children(exited)
            self.next_housekeeping = min(self.next_housekeeping, self._next_due_of(exited))
        now = time.monotonic()
        if now >= self.next_housekeeping:
            period = SHUTDOWN_HOUSEKEEPING_PERIOD if self.shutting_down else min(
                HOUSEKEEPING_PERIOD, self.config.supervisor.heartbeat_timeout / 8)
            self.next_housekeeping = now + period
            if now >= self.next_reap_sweep:
                self.next_reap_sweep = now + REAP_SWEEP_PERIOD
                self.reap_children()
            if self.is_pid1:
                reap_orphans({r.pid for r in self.records.values() if r.pid})
            now = time.monotonic()
            self.murder_hung(now)
            self.enforce_stop_deadlines(now)
            if self.cluster is not None:
                self.cluster_tick(now)
            if not self.shutting_down:
                self.refresh_if_due(now)
                self.start_due(now)
                self.announce_ready_once()
            self.next_housekeeping = min(self.next_housekeeping, self._next_due())
        self.write_status_if_due(now)
        self.ping_watchdog(now)

    def _wait_objects(self) -> list[Any]:
        """What the loop waits on besides the children (registered once, see _register_fixed)."""
        objects: list[Any] = [self._wake_r]
        if self.metrics is not None:
            objects.append(self.metrics)
        return objects

    def _register_fixed(self) -> None:
        for obj in self._wait_objects():
            if obj is not None and obj not in self._registered_fixed:
                self.selector.register(obj, selectors.EVENT_READ, None)
                self._registered_fixed.add(obj)

    def _register_child(self, record: TenantRecord) -> None:
        handle = record.handle
        self.selector.register(handle.conn, selectors.EVENT_READ, record)
        self.selector.register(handle.process.sentinel, selectors.EVENT_READ, record)

    def _unregister(self, obj: Any) -> None:
        try:
            self.selector.unregister(obj)
        except (KeyError, ValueError, OSError):
            pass

    def _next_due(self) -> float:
        """The earliest start or stop deadline (monotonic); O(n), so only from housekeeping."""
        due = [r.next_start_at for r in self.records.values()
               if r.next_start_at is not None and not r.is_alive()]
        due += [r.stop_deadline for r in self.records.values() if r.stop_deadline is not None]
        return min(due) if due else float("inf")

    def _wait_timeout(self, now: float) -> float:
        due = min(self.next_housekeeping, self._next_status_write())
        return min(MAX_WAIT, max(0.0, due - now))

    # ---- signals -----------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, frame: Any) -> None:
        self.signal_queue.append(signum)  # only record it: the loop does the work

    def _drain_wakeup(self, ready: set[Any]) -> None:
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass

    def handle_signals(self) -> None:
        if self.signal_queue:
            self.status_dirty = True
        while self.signal_queue:
            signum = self.signal_queue.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_term(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self.handle_hup()

    def handle_term(self, name: str) -> None:
        now = time.monotonic()
        if self.shutting_down:
            # A second signal: the operator wants out now.
            log.warning("%s again: killing remaining tenant processes", name)
            for record in self.records.values():
                if record.is_alive():
                    record.stop_deadline = now
            return
        log.info("%s: stopping %d tenant processes", name,
                 sum(r.is_alive() for r in self.records.values()))
        sdnotify.stopping()
        self.shutting_down = True
        timeout = self.config.supervisor.shutdown_timeout
        for record in self.records.values():
            record.next_start_at = None
            if record.is_alive():
                self.stop_tenant(record, StopReason.SHUTDOWN, now, timeout)
            elif record.state is not State.FAILED:
                record.state = State.STOPPED

    def handle_hup(self) -> None:
        log.info("SIGHUP: reloading config and tenants")
        sdnotify.reloading()
        try:
            self.config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload: keeping the previous config: %s", exc)
        else:
            self.apply_tenants(retry_failed=True)
        sdnotify.ready()
        self.write_status_now()

    # ---- tenants: load, diff, apply ----------------------------------------------------

    def restart_policy(self) -> RestartPolicy:
        s = self.config.supervisor
        return RestartPolicy(backoff=s.restart_backoff, jitter=s.restart_jitter,
                             failed_backoff=s.failed_backoff, max_restarts=s.max_restarts,
                             window=s.restart_window)

    # ---- starting ----------------------------------------------------------------------

    def start_due(self, now: float) -> None:
        due = [r for r in self.records.values()
               if not r.is_alive() and r.spec is not None
               and r.next_start_at is not None and r.next_start_at <= now]
        if not due:
            return
        due.sort(key=lambda r: r.next_start_at or 0.0)
        preload_ssl_contexts(r.spec for r in due[:START_BATCH] if r.spec is not None)
        signin.preload(r.spec for r in due[:START_BATCH] if r.spec is not None)
        gc.collect()
        gc.freeze()  # keep the parent's objects out of the children's GC: pages stay shared
        for record in due[:START_BATCH]:
            self.spawn_tenant(record, now)

    def spawn_tenant(self, record: TenantRecord, now: float) -> None:
        spec = record.spec
        assert spec is not None
        try:
            handle = fork_tenant(spec)
        except OSError as exc:
            log.error("[%s] fork failed: %s; retrying in %.0fs", spec.name, exc,
                      self.config.supervisor.restart_backoff)
            record.next_start_at = now + self.config.supervisor.restart_backoff
            return
        record.mark_started(now, handle.process.pid or 0, handle)
        self._register_child(record)
        self.status_dirty = True
        log.info("[%s] started (pid %d)%s", spec.name, handle.process.pid,
                 f", restart #{record.restarts}" if record.restarts else "")

    def announce_ready_once(self) -> None:
        if self.ready_sent:
            return
        pending = any(r.spec is not None and not r.is_alive() and r.next_start_at is not None
                      and r.state is State.STOPPED for r in self.records.values())
        if not pending:
            self.ready_sent = True
            sdnotify.ready()
            log.info("all %d tenants started", sum(r.is_alive() for r in self.records.values()))

    # ---- messages from children --------------------------------------------------------

    def read_messages(self, ready: set[Any], candidates: list[TenantRecord]) -> None:
        """Read from the children whose pipe is readable (candidates: from the ready events)."""
        now = time.monotonic()
        for record in {id(r): r for r in candidates}.values():  # pipe and sentinel: once
            handle = record.handle
            if handle is None or not handle.conn_open or handle.conn not in ready:
                continue
            for _ in range(MESSAGES_PER_CHILD_PER_TICK):
                try:
                    if not handle.conn.poll():
                        break
                    message = protocol.receive(handle.conn)
                except (EOFError, OSError):
                    handle.conn_open = False  # the sentinel will tell us it exited
                    self._unregister(handle.conn)  # else an EOF pipe wakes every tick
                    break
                if message is not None:
                    self.handle_message(record, message, now)

    def handle_message(self, record: TenantRecord, message: dict[str, Any], now: float) -> None:
        kind = message["type"]
        if kind == "heartbeat":
            previous = record.display_state()
            seen = (record.mode, record.last_error, dict(record.counters))
            record.on_heartbeat(now, message)
            if record.display_state() != previous and record.state is not State.STOPPING:
                log.debug("[%s] %s -> %s", record.name, previous, record.display_state())
            if record.display_state() != previous or seen != (record.mode, record.last_error,
                                                              record.counters):
                self.status_dirty = True
            return
        self.status_dirty = True
        if kind == "hello":
            record.last_heartbeat = now
        elif kind == "fatal":
            record.on_fatal(str(message.get("kind", "error")), str(message.get("reason", "")))
        elif kind == "processed":
            record.last_heartbeat = now
            latency = message.get("latency")
            if isinstance(latency, (int, float)) and latency >= 0:
                self.latency.observe(float(latency))
        else:
            log.warning("[%s] unexpected IPC message type %r dropped", record.name, kind)

    # ---- reaping, hung children, stop deadlines ----------------------------------------

    def reap_children(self, candidates: list[TenantRecord] | None = None) -> None:
        """Collect exited children: the given ones, or (safety net) every tenant."""
        now = time.monotonic()
        policy = self.restart_policy()
        for record in list(candidates if candidates is not None else self.records.values()):
            handle = record.handle
            if handle is None or handle.process.is_alive():  # is_alive() reaps via waitpid
                continue
            exitcode = handle.process.exitcode
            self._drain_last_words(record, now)
            self._close_handle(handle)
            self.status_dirty = True
            reason = record.stop_reason
            record.on_exit(now, exitcode, policy, self.rng, self.shutting_down)
            self._log_exit(record, exitcode, reason)
            if reason is StopReason.REMOVED and record.spec is not None and record.id in self.records:
                if record.state is State.STOPPED:
                    del self.records[record.id]
            elif reason is StopReason.REMOVED and record.spec is None:
                record.state = State.FAILED  # invalid config: shown as failed until fixed

    def _drain_last_words(self, record: TenantRecord, now: float) -> None:
        """Read what a dead child sent just before exiting (its fatal reason, final counters)."""
        handle = record.handle
        try:
            while handle.conn_open and handle.conn.poll(0):
                message = protocol.receive(handle.conn)
                if message is not None:
                    self.handle_message(record, message, now)
        except (EOFError, OSError):
            pass

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

    def _close_handle(self, handle: ChildHandle) -> None:
        self._unregister(handle.conn)
        self._unregister(handle.process.sentinel)
        try:
            handle.conn.close()
        except OSError:
            pass
        handle.process.join(0)
        handle.process.close()

    def murder_hung(self, now: float) -> None:
        timeout = self.config.supervisor.heartbeat_timeout
        for record in self.records.values():
            if record.quiet_for and record.handle is not None and now >= record.next_probe_at:
                reason = self._probe_quiet(record, now, timeout)
                if reason is not None:
                    self._kill_hung(record, now, f"silent for {record.silence(now):.0f}s and "
                                                 f"{reason}: killed as hung")
                    continue
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
                    send_stop: bool = True) -> None:
        handle = record.handle
        if handle is None:
            return
        record.begin_stop(now, reason, timeout)
        self.status_dirty = True
        if send_stop and handle.conn_open:
            protocol.send(handle.conn, protocol.stop())
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
                self._close_handle(record.handle)
                record.on_exit(time.monotonic(), exitcode, self.restart_policy(), self.rng, True)

    # ---- status and systemd ------------------------------------------------------------

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
        phase = "stopping" if self.shutting_down else "running"
        status = build_status(os.getpid(), self.started_at_wall, phase, self.records.values(),
                              now, time.time())
        if self.cluster is not None:
            status["supervisor"]["cluster"] = self.cluster.status(now)
        try:
            write_status(self.state_dir, status)
        except OSError as exc:
            log.error("cannot write status.json: %s", exc)
        summary = summary_line(self.records.values())
        if summary != self.last_summary:
            self.last_summary = summary
            sdnotify.status(summary)

    def ping_watchdog(self, now: float) -> None:
        if self.watchdog_period is not None and now >= self.next_watchdog:
            sdnotify.watchdog()
            self.next_watchdog = now + self.watchdog_period


