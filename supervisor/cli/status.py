"""`idle-supervisor status`: the running supervisor's tenants, asked live over its control
socket, or read from status.json when none answers; RSS and CPU per tenant read with psutil.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from supervisor.cli.args import PROG, load, with_config
from supervisor.service.pidfile import read_pid


def add_status_command(sub: Any) -> None:
    status = sub.add_parser("status", help="show the running supervisor's tenants (live from its "
                            "control socket; status.json when none answers)")
    with_config(status)
    status.add_argument("--json", action="store_true",
                        help="print the status as JSON (status.json's fields, read live)")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from supervisor.service.status import read_status

    _, config = load(args)
    state_dir = Path(config.supervisor.state_dir)
    pid = read_pid(state_dir)
    # Only the holder of the pid-file lock may answer: a socket file without one is the
    # leftover of a supervisor that was SIGKILLed.
    status = _live_status(state_dir) if pid is not None else None
    source = "live"
    if status is None:
        source = "file"
        try:
            status = read_status(state_dir)
        except FileNotFoundError:
            print(f"{PROG}: no status in {state_dir}: the supervisor has not run there", file=sys.stderr)
            return 1
        except ValueError:
            print(f"{PROG}: {state_dir / 'status.json'} is not valid JSON", file=sys.stderr)
            return 1
        except OSError as exc:  # e.g. a link planted there: never followed
            print(f"{PROG}: cannot read {state_dir / 'status.json'}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    running = pid is not None and pid == status.get("supervisor", {}).get("pid")
    status["supervisor"]["running"] = running
    status["supervisor"]["source"] = source  # "live": asked the supervisor; "file": status.json
    _add_process_usage(status)
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_status_table(status))
    return 0 if running else 3


def _live_status(state_dir: Path) -> dict[str, Any] | None:
    from supervisor.service.control import CommandError, ControlUnavailable, request

    try:
        status = request(state_dir, "status")
    except (ControlUnavailable, CommandError):
        return None
    return status if isinstance(status, dict) and "supervisor" in status else None


def _add_process_usage(status: dict[str, Any]) -> None:
    """RSS and CPU per tenant process, read live with psutil (not from status.json)."""
    import psutil

    for tenant in status.get("tenants", {}).values():
        pid = tenant.get("pid")
        tenant["rss_bytes"] = tenant["cpu_percent"] = None
        if not pid:
            continue
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                tenant["rss_bytes"] = proc.memory_info().rss
                times = proc.cpu_times()
                elapsed = max(1e-6, time.time() - proc.create_time())
                tenant["cpu_percent"] = round(100.0 * (times.user + times.system) / elapsed, 3)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def format_status_table(status: dict[str, Any]) -> str:
    sup = status.get("supervisor", {})
    state = "running" if sup.get("running") else "NOT RUNNING (last known status)"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(sup.get("started_at") or 0))
    lines = [f"supervisor pid {sup.get('pid')} {state}, started {started}, {sup.get('tenants', 0)} tenants"]
    cluster = sup.get("cluster")
    if isinstance(cluster, dict):
        lines.append(f"cluster instance {cluster.get('instance_id')}: holds {cluster.get('held')} "
                     f"leases (fair share {cluster.get('fair_share')}, {cluster.get('releasing')} "
                     f"being handed back), {cluster.get('live_instances')} live instances, "
                     f"{cluster.get('lost_total')} leases lost so far")
    header = ["TENANT", "NAME", "PID", "STATE", "MODE", "HEARTBEAT", "PROCESSED", "FAILED",
              "IN FAILED", "SKIPPED", "RESTARTS", "RSS", "CPU%", "LAST ERROR"]
    rows = [header]
    for tid, t in status.get("tenants", {}).items():
        age = t.get("last_heartbeat_age")
        rss = t.get("rss_bytes")
        rows.append([
            tid, t.get("name") or "", str(t.get("pid") or "-"), t.get("state") or "-",
            t.get("mode") or "-", f"{age:.1f}s ago" if isinstance(age, (int, float)) else "-",
            str(t.get("processed", 0)), str(t.get("failed", 0)),
            "-" if t.get("failed_in_ledger") is None else str(t["failed_in_ledger"]),
            str(t.get("skipped", 0)), str(t.get("restarts", 0)),
            f"{rss / 1048576:.1f}M" if rss else "-",
            f"{t['cpu_percent']:.2f}" if t.get("cpu_percent") is not None else "-",
            (t.get("last_error") or "")[:80],
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
