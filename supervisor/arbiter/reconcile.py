"""The arbiter's "what should run" half: load tenants, diff them against what runs, act.

supervisord's diff_to_active and circus's reload_from_config: added tenants are scheduled,
removed ones stopped, changed ones restarted with their new spec, unchanged ones left alone
(same pid). In cluster mode only the companies whose lease this instance holds are wanted.
A mixin of Arbiter: it uses the arbiter's records, config and stop_tenant().
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterable

from ipc import protocol
from supervisor.children.preload import preload_backends
from supervisor.children.records import State, StopReason, TenantRecord, diff_tenants
from supervisor.errors import ConfigError, SourceError
from supervisor.tenants.sources import load_tenants
from tenant_proc.deps import MissingDependency
from tenant_proc.handlers.loader import HandlerError, resolve_target

log = logging.getLogger("supervisor")

SOURCE_RETRY = 30.0  # after a failed tenant read, try again this soon


class TenantReconciler:
    # The arbiter's (supervisor/arbiter/arbiter.py): annotations only, nothing defined at runtime.
    records: dict[str, TenantRecord]
    config: Any
    cluster: Any
    next_refresh: float
    status_dirty: bool
    shutting_down: bool

    if TYPE_CHECKING:
        def stop_tenant(self, record: TenantRecord, reason: StopReason, now: float, timeout: float,
                        send_stop: bool = True) -> None: ...

    def refresh_if_due(self, now: float) -> None:
        if now >= self.next_refresh:
            self.apply_tenants()

    def apply_tenants(self, initial: bool = False, retry_failed: bool = False) -> None:
        """Load tenants, diff against what runs, and act: supervisord's diff_to_active."""
        now = time.monotonic()
        self.next_refresh = now + self.config.supervisor.tenant_refresh
        try:
            resolve_target(self.config.handler.target)  # fail fast, and preload before fork
            preload_backends(self.config)
            load = load_tenants(self.config)
        except (SourceError, ConfigError, HandlerError, MissingDependency) as exc:
            # Keep running what we have; try again soon (a source outage is usually short).
            if initial and isinstance(exc, (ConfigError, HandlerError, MissingDependency)):
                raise ConfigError(one_line(exc)) from None
            log.error("tenants not refreshed: %s", one_line(exc))
            self.next_refresh = now + min(self.config.supervisor.tenant_refresh, SOURCE_RETRY)
            return
        if self.cluster is not None:
            load = self.cluster.select(load, now)  # only the companies this instance holds
        wanted: dict[str, Any] = dict(load.specs)
        wanted.update({tid: None for tid in load.errors})
        active = {tid: r.spec for tid, r in self.records.items()
                  if r.stop_reason is not StopReason.REMOVED}
        diff = diff_tenants(active, wanted)
        for tid in diff.removed:
            self.remove_tenant(self.records[tid], now)
        for tid in diff.added:
            self.add_tenant(tid, load.specs.get(tid), load.errors.get(tid), now)
        for tid in diff.changed:
            self.change_tenant(self.records[tid], load.specs.get(tid), load.errors.get(tid), now)
        for tid in diff.unchanged:
            record = self.records[tid]
            if tid in load.errors:
                record.name, record.config_error = load.errors[tid][0], load.errors[tid][1]
                record.last_error = record.config_error
            elif retry_failed:
                record.retry_failed_now(now)
        if diff.added or diff.removed or diff.changed:
            log.info("tenants: %d added, %d removed, %d changed, %d unchanged",
                     len(diff.added), len(diff.removed), len(diff.changed), len(diff.unchanged))

    def add_tenant(self, tid: str, spec: Any, error: tuple[str, str] | None, now: float) -> None:
        leaving = self.records.get(tid)
        if leaving is not None and leaving.is_alive():
            # Re-added while its old process is still stopping: treat it as a change so the
            # old process is never orphaned.
            leaving.stop_reason = StopReason.CHANGED
            leaving.pending_spec = spec
            if spec is None:
                leaving.stop_reason = StopReason.REMOVED
            return
        if spec is None:
            name, reason = error or (tid, "invalid config")
            record = TenantRecord(id=tid, name=name, spec=None, config_error=reason,
                                  state=State.FAILED, last_error=reason)
            log.error("[%s] not started: %s", name, reason)
        else:
            record = TenantRecord(id=tid, name=spec.name, spec=spec)
            record.schedule_start(now)
        self.records[tid] = record

    def remove_tenant(self, record: TenantRecord, now: float, why: str = "removed from tenants",
                      timeout: float | None = None) -> None:
        log.info("[%s] %s: stopping", record.name, why)
        if record.is_alive():
            if timeout is None:
                timeout = self.config.supervisor.shutdown_timeout
            self.stop_tenant(record, StopReason.REMOVED, now, timeout)
        else:
            del self.records[record.id]

    def cluster_tick(self, now: float) -> None:
        """Leases (supervisor/tenants/cluster.py): renew, stop what was lost or handed back, claim more."""
        actions = self.cluster.maintain(now, lambda tid: tid in self.records
                                        and self.records[tid].is_alive())
        if self.shutting_down:
            return  # everything is stopping already; leases are released after the last exit
        for tid in actions.lost:
            if tid in self.records:  # its writes are refused now: no point in a slow goodbye
                self.remove_tenant(self.records[tid], now, "lease lost",
                                   self.config.supervisor.kill_timeout)
        for tid in actions.hand_back:
            if tid in self.records:
                self.remove_tenant(self.records[tid], now, "handed back to the cluster")
        if actions.lost or actions.hand_back:
            self.status_dirty = True
        if actions.claim:
            self.next_refresh = now  # apply_tenants() claims through cluster.select()
        # `idle-supervisor retry` marked some of our companies' emails, perhaps on another
        # machine, whose SIGHUP reached only its own supervisor.
        self.tell_replay(actions.replay)

    def tell_replay(self, tids: Iterable[str]) -> None:
        """Forward `replay` (look in the ledger for emails marked with `retry`) to these."""
        for tid in tids:
            record = self.records.get(tid)
            if record is not None and record.handle is not None and record.handle.conn_open:
                record.handle.send(protocol.replay())

    def change_tenant(self, record: TenantRecord, spec: Any, error: tuple[str, str] | None,
                      now: float) -> None:
        if spec is None:
            name, reason = error or (record.id, "invalid config")
            log.error("[%s] config now invalid: %s", name, reason)
            record.config_error = record.last_error = reason
            if record.is_alive():
                # Stop it; with no spec it stays FAILED until the config is fixed.
                record.pending_spec = None
                self.stop_tenant(record, StopReason.REMOVED, now, self.config.supervisor.shutdown_timeout)
                record.stop_reason = StopReason.REMOVED
            record.spec = None
            record.name = name
            record.next_start_at = None
            if not record.is_alive():
                record.state = State.FAILED
            return
        log.info("[%s] config changed: restarting", spec.name)
        record.config_error = None
        if record.is_alive():
            record.pending_spec = spec
            self.stop_tenant(record, StopReason.CHANGED, now, self.config.supervisor.shutdown_timeout)
        else:
            record.spec, record.name = spec, spec.name
            record.last_error = None
            record.crash_times.clear()
            record.schedule_start(now)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
