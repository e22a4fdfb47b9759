"""The supervisor's settings as frozen dataclasses: the shape of a loaded config, with defaults.

A vocabulary module: it imports nothing of the supervisor, so the loader (load.py), the
derived timeouts (timeouts.py) and every reader of a Config can import it without a circle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from tenant_proc.spec import HandlerSpec, ImapSettings, StateSpec


@dataclass(frozen=True)
class SupervisorSettings:
    state_dir: str = "state"
    restart_backoff: float = 60.0  # crash -> restart delay (jittered)
    restart_jitter: float = 0.1  # +/- fraction of restart_backoff, so an outage is no login storm
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0  # no heartbeat this long: terminate, then kill
    # A tenant idling (or between polls) with nothing new beats this often instead; meanwhile
    # the supervisor checks in /proc that it is asleep, not stopped or spinning. 1,000 tenants
    # beating every 5 s were most of an idle supervisor's CPU (bench/idle_cost.py). Above
    # Dovecot's 2-minute keepalive, so idle beats ride on it (Control._beat_while_awake).
    idle_heartbeat_interval: float = 150.0
    tenant_refresh: float = 300.0
    shutdown_timeout: float = 10.0
    failed_backoff: float = 900.0  # auth/config failures, restart-intensity trips
    max_restarts: int = 5  # more crashes than this within restart_window -> failed
    restart_window: float = 600.0
    kill_timeout: float = 5.0  # after SIGTERM of a hung child, SIGKILL this much later


@dataclass(frozen=True)
class TenantSourceSettings:
    source: str = "file"  # file | supabase
    file: str | None = None  # optional separate TOML holding [[tenant]] tables
    # companies rows may name environment variables, programs and files of this host
    # (supervisor/tenants/row_trust.py); the file's [[tenant]] tables always may
    trust_rows: bool = False


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""  # "127.0.0.1:9464" serves Prometheus metrics; empty: off


@dataclass(frozen=True)
class ClusterSettings:
    """[cluster]: several supervisors share the companies through leases (README: Running on several machines)."""

    enabled: bool = False
    instance_id: str = ""  # empty: host name + pid, unique per run
    lease_ttl: float = 30.0  # seconds; renewed every lease_ttl / 3
    max_tenants: int = 0  # most companies this instance runs; 0 = no limit


@dataclass(frozen=True)
class Config:
    path: str
    base_dir: str
    supervisor: SupervisorSettings
    imap: ImapSettings
    handler: HandlerSpec
    state: StateSpec
    tenants: TenantSourceSettings
    metrics: MetricsSettings = MetricsSettings()
    cluster: ClusterSettings = ClusterSettings()
    raw_tenants: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)
