"""The arbiter: one single-threaded loop that owns every tenant process.

One tick: wait on every child pipe, every process sentinel, the signal wake-up socket and the
control socket (bounded timeout), then read messages, answer the control socket, drain
signals, reap, check heartbeats and stop deadlines, refresh tenants when due, start what is
due, write status, ping systemd. A failing tick is contained (supervisor/arbiter/tick_guard.py).

The concerns beside the loop are mixins, each in its own module: what should run
(reconcile.py), reading children's messages (child_messages.py), how children end (exits.py),
what the outside sees (reporting.py: status.json, the control socket, systemd).

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

from supervisor.arbiter import tick_guard
from supervisor.arbiter.child_messages import ChildMessages
from supervisor.arbiter.exits import ChildExits
from supervisor.arbiter.reconcile import TenantReconciler
from supervisor.arbiter.reporting import StatusReporter
from supervisor.children.forking import ShutdownPipe, fork_tenant, reap_orphans
from supervisor.children.hung_checks import HungChecks
from supervisor.children.records import RestartPolicy, State, StopReason, TenantRecord
from supervisor.config.load import load_config
from supervisor.config.settings import Config
from supervisor.errors import ConfigError
from supervisor.service import sdnotify
from supervisor.service.control import ControlServer
from supervisor.service.metrics import LatencyHistogram, MetricsError, MetricsServer
from supervisor.service.pidfile import PidFile
from supervisor.tenants.cluster import make_cluster
from tenant_proc.handlers.loader import HandlerError, resolve_target
from tenant_proc.imap.tls import preload_ssl_contexts
from tenant_proc.signin import login as signin

log = logging.getLogger("supervisor")

MAX_WAIT = 1.0  # the loop never sleeps longer than this (issue contract)
START_BATCH = 25  # forks per tick: a thousand tenants start staggered, not as one storm
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


class Arbiter(TenantReconciler, ChildMessages, ChildExits, StatusReporter):
    def __init__(self, config_path: Path | None, config: Config) -> None:
        self.config_path = config_path
        self.config = config
        self.state_dir = Path(config.supervisor.state_dir)
        self.records: dict[str, TenantRecord] = {}
        self.live_children = 0  # records with a handle: +1 at spawn, -1 when reaped (exits.py)
        self.shutdown_pipe: ShutdownPipe | None = None  # made in initialize(), before any fork
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
        self.control: ControlServer | None = None
        self.tick_failures = tick_guard.TickFailures()
        self.exit_code = 0
        self.give_up_at: float | None = None  # set when repeated failures end the run
        self.is_pid1 = os.getpid() == 1  # in a container: orphans re-parented to us are ours to reap
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        # One epoll set for the whole run: children are registered at spawn and removed at
        # reap, instead of building and polling a list of 2n+1 objects on every tick.
        self.selector = selectors.DefaultSelector()
        self.next_housekeeping = 0.0
        self.next_reap_sweep = 0.0
        self.status_dirty = True
        self.hung_checks = HungChecks()  # murder_hung looks only at the tenants that are due
        self._registered_fixed: set[Any] = set()
        self.cluster = make_cluster(config)  # None unless [cluster] enabled (README: several machines)

    # ---- lifecycle ---------------------------------------------------------------------

    def run(self) -> int:
        self.initialize()
        try:
            while not self.finished():
                try:
                    self.tick()
                except Exception as exc:
                    self.contain_failed_tick(exc)
        finally:
            self.cleanup()
        log.info("supervisor stopped")
        return self.exit_code

    def initialize(self) -> None:
        try:
            resolve_target(self.config.handler.target)  # refuse to start on an unusable handler
        except HandlerError as exc:
            raise ConfigError(str(exc)) from None
        self.pidfile.acquire()  # makes state_dir (this user's, 0700) first
        sdnotify.forget_notify_socket()  # children must never inherit NOTIFY_SOCKET
        if self.config.metrics.listen:
            try:
                self.metrics = MetricsServer(self.config.metrics.listen,
                                             lambda: list(self.records.values()), self.latency,
                                             self.selector)
            except MetricsError as exc:
                self.pidfile.release()
                raise ConfigError(str(exc)) from None
        self._install_signals()
        self.shutdown_pipe = ShutdownPipe()
        policy = self.restart_policy()
        log.info("supervisor started (pid %d, config %s, restart backoff %.0fs)",
                 os.getpid(), self.config.path, policy.backoff)
        self.apply_tenants(initial=True)
        self.open_control()  # we hold the pid-file lock: a socket file there now is stale
        self.write_status_now()

    def finished(self) -> bool:
        if self.give_up_at is not None and time.monotonic() >= self.give_up_at:
            return True  # failing ticks cannot finish the stop: cleanup() kills what is left
        # A count, not any(is_alive) over every record: the loop asks once per tick, and a
        # thousand tenants exiting one by one made that scan O(n^2) over a stop (~20 % of the
        # parent's samples while 1,000 stopped, py-spy).
        return self.shutting_down and self.live_children == 0

    def contain_failed_tick(self, exc: Exception) -> None:
        """One line per failed tick; the tenants keep running. Repeated failures: stop every
        tenant gracefully and exit non-zero (supervisor/arbiter/tick_guard.py)."""
        now = time.monotonic()
        log.error("loop tick failed: %s%s", tick_guard.describe(exc),
                  "" if self.give_up_at is not None else "; tenants keep running")
        if self.tick_failures.record(now) and self.give_up_at is None:
            s = self.config.supervisor
            log.error("%d failed loop ticks within %.0fs: stopping every tenant, then exiting",
                      self.tick_failures.limit, self.tick_failures.window)
            self.exit_code = tick_guard.EXIT_LOOP_FAILED
            self.give_up_at = now + s.shutdown_timeout + s.kill_timeout + 5.0
            self.handle_term("repeated loop failures")
        time.sleep(tick_guard.FAILED_TICK_PAUSE)

    def cleanup(self) -> None:
        if self.shutdown_pipe is not None:
            self.shutdown_pipe.close_write()  # whatever ended the run: no tenant outlives it
        self.kill_survivors()
        if self.cluster is not None:
            self.cluster.leave()  # every child is gone: hand every lease back at once
        if self.metrics is not None:
            self.metrics.close()
        self.close_control()
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
        speaking = [key.data for key, _ in events if key.data is not None]
        self.read_messages(ready_set, speaking)
        timeout = self.config.supervisor.heartbeat_timeout
        for record in speaking:  # a message may move its hung check earlier (a quiet promise)
            self.hung_checks.schedule(record, timeout)
        if self.control is not None:  # after the messages: a live status is current to them
            self.control.serve(ready_set)
        if self.metrics is not None:  # never blocking: a silent scraper costs no wait
            self.metrics.serve(ready_set)
        if self.signal_queue:  # signals, and reload/stop from the control socket
            self.next_housekeeping = 0.0  # act on these at once, not at the next period
        self.handle_signals()
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
        return [self._wake_r]  # the control socket and metrics register their own sockets

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
        for server in (self.control, self.metrics):  # a client's deadline wakes the loop
            if server is not None:
                due = min(due, server.next_deadline())
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
        # Every tenant hears it at once, from one close() (forking.ShutdownPipe), instead of a
        # message and a SIGTERM each: the deadlines are set first, while nobody is awake yet to
        # take the CPU from this loop. The deadline's SIGKILL stays the backstop, as before.
        told = self.shutdown_pipe is not None and self.shutdown_pipe.open
        for record in self.records.values():
            record.next_start_at = None
            if record.is_alive():
                self.stop_tenant(record, StopReason.SHUTDOWN, now, timeout, told=told)
            elif record.state is not State.FAILED:
                record.state = State.STOPPED
        if told:
            self.shutdown_pipe.close_write()

    def handle_hup(self) -> None:
        log.info("SIGHUP: reloading config and tenants")
        sdnotify.reloading()
        try:
            self.config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload: keeping the previous config: %s", exc)
        else:
            self.apply_tenants(retry_failed=True)
            # heartbeat_timeout may have changed: every tenant's next look moves with it
            self.hung_checks.rebuild(list(self.records.values()),
                                     self.config.supervisor.heartbeat_timeout)
        self.tell_replay(list(self.records))  # `idle-supervisor retry` marked emails: look again
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
            handle = fork_tenant(spec, self.shutdown_pipe.read_fd if self.shutdown_pipe else None)
        except OSError as exc:
            log.error("[%s] fork failed: %s; retrying in %.0fs", spec.name, exc,
                      self.config.supervisor.restart_backoff)
            record.next_start_at = now + self.config.supervisor.restart_backoff
            return
        record.mark_started(now, handle.process.pid or 0, handle)
        self.live_children += 1
        self._register_child(record)
        self.hung_checks.schedule(record, self.config.supervisor.heartbeat_timeout)
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
