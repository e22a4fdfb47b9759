"""status.json: the supervisor's state for `idle-supervisor status`, scripts and monitoring.

Written atomically (temp file + rename in the same directory) so a reader never sees half a
file, and 0600 because it lives beside the checkpoints. mkstemp creates with O_EXCL and the
rename replaces whatever name is there, a planted link included, so no write follows a link. It never holds a secret: it is built
from TenantRecord fields that come from heartbeats, not from specs.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import orjson

from supervisor.children.records import COUNTER_NAMES, SKIPPED_COUNTERS, TenantRecord

STATUS_FILE = "status.json"
WEBHOOK_COUNTERS = tuple(n for n in COUNTER_NAMES if n.startswith("webhook_"))


def tenant_status(record: TenantRecord, now: float) -> dict[str, Any]:
    age = None
    if record.last_heartbeat is not None and record.is_alive():
        age = round(now - record.last_heartbeat, 3)
    retry_in = None
    if record.next_start_at is not None and not record.is_alive():
        retry_in = round(max(0.0, record.next_start_at - now), 1)
    return {
        "name": record.name,
        "pid": record.pid,
        "state": record.display_state(),
        "mode": record.mode,
        "last_heartbeat_age": age,
        "processed": record.counters["processed"],
        "failed": record.counters["failed"],
        "restarts": record.restarts,
        "last_error": record.last_error,
        # Extensions beyond the core contract:
        "supervisor_state": record.state.value,
        "reconnects": record.counters["reconnects"],
        "server_idle_age": record.server_idle_age,
        "retry_in": retry_in,
        # issue 13: emails in the ledger as failed (None until the tenant reported), handler
        # latency and webhook outcomes
        "failed_in_ledger": record.gauges.get("failed_in_ledger"),
        "handler_calls": record.counters["handler_calls"],
        "handler_seconds": round(record.counters["handler_ms"] / 1000, 3),
        "webhook": {name[len("webhook_"):]: record.counters[name]
                    for name in WEBHOOK_COUNTERS},
        # issue 23: emails `[imap] skip` kept from the handler, and how many of each class
        "skipped": record.counters["skipped"],
        "skipped_by_class": {name[len("skipped_"):]: record.counters[name]
                             for name in SKIPPED_COUNTERS},
    }


def build_status(pid: int, started_at: float, phase: str, records: Iterable[TenantRecord],
                 now: float, wall_now: float) -> dict[str, Any]:
    tenants = {r.id: tenant_status(r, now) for r in sorted(records, key=lambda r: r.id)}
    return {
        "supervisor": {
            "pid": pid,
            "started_at": started_at,
            "tenants": len(tenants),
            "phase": phase,
            "updated_at": wall_now,
        },
        "tenants": tenants,
    }


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    data = orjson.dumps(status, option=orjson.OPT_INDENT_2)
    fd, tmp = tempfile.mkstemp(prefix=".status.", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as fh:  # mkstemp creates 0600
            fh.write(data)
        os.replace(tmp, state_dir / STATUS_FILE)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_status(state_dir: Path) -> dict[str, Any]:
    """Written by replace(), which never follows a link; read without following one either."""
    fd = os.open(state_dir / STATUS_FILE, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        return orjson.loads(fh.read())


def summary_line(records: Iterable[TenantRecord]) -> str:
    """For systemd's STATUS=: '40 tenants: 38 idle, 1 polling, 1 failed'."""
    counts: dict[str, int] = {}
    total = 0
    for record in records:
        total += 1
        state = record.display_state()
        counts[state] = counts.get(state, 0) + 1
    parts = [f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    noun = "tenant" if total == 1 else "tenants"
    return f"{total} {noun}: " + ", ".join(parts) if parts else "0 tenants"
