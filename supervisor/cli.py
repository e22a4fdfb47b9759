"""`idle-supervisor` subcommands: run, status, reload, stop, check, cluster, failed, retry.

Every error a user can cause ends in one line on stderr and a non-zero exit, never a traceback
and never a secret.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from supervisor.config import Config, ConfigError, load_config, resolve_config_path
from supervisor.logsetup import setup_logging
from supervisor.pidfile import AlreadyRunning, read_pid
from tenant_proc.deps import MissingDependency

EXIT_USAGE = 2
PROG = "idle-supervisor"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except (ConfigError, AlreadyRunning, MissingDependency) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Watch every company's mailbox with IMAP IDLE.")
    sub = parser.add_subparsers(dest="command")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c",
                       help="config TOML (default: $IDLE_SUPERVISOR_CONFIG; with neither, "
                            "IDLE_SUPERVISOR_<SECTION>_<KEY> and SUPABASE_* variables configure "
                            "everything, as on Railway or in a container)")

    run = sub.add_parser("run", help="run the supervisor in the foreground")
    with_config(run)
    run.add_argument("--log-level", default=os.environ.get("IDLE_SUPERVISOR_LOG_LEVEL", "INFO"),
                     choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"])
    run.add_argument("--log-format", default=os.environ.get("IDLE_SUPERVISOR_LOG_FORMAT", "text"),
                     choices=["text", "json"])
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="show the running supervisor's tenants (live from its "
                            "control socket; status.json when none answers)")
    with_config(status)
    status.add_argument("--json", action="store_true",
                        help="print the status as JSON (status.json's fields, read live)")
    status.set_defaults(func=cmd_status)

    reload_ = sub.add_parser("reload", help="re-read config and tenants (SIGHUP)")
    with_config(reload_)
    reload_.set_defaults(func=cmd_reload)

    stop = sub.add_parser("stop", help="stop the supervisor and every tenant (SIGTERM)")
    with_config(stop)
    stop.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="wait up to this long for it to exit")
    stop.set_defaults(func=cmd_stop)

    check = sub.add_parser("check", help="log in to tenants and report what their servers offer")
    with_config(check)
    check.add_argument("tenant_ids", nargs="*", metavar="TENANT_ID")
    check.add_argument("--timeout", type=float, default=15.0)
    check.set_defaults(func=cmd_check)

    cluster = sub.add_parser("cluster", help="list live supervisor instances and their leases")
    with_config(cluster)
    cluster.add_argument("--json", action="store_true")
    cluster.set_defaults(func=cmd_cluster)

    from supervisor.cli_failed import add_commands as add_failed_commands

    add_failed_commands(sub, with_config)  # failed, retry
    return parser


def _config(args: argparse.Namespace) -> tuple[Path | None, Config]:
    path = resolve_config_path(args.config)
    return path, load_config(path)


# ---- run --------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    path, config = _config(args)
    from setproctitle import setproctitle

    from supervisor.arbiter import Arbiter

    setproctitle(f"idle-supervisor: supervisor {config.path}")
    return Arbiter(path, config).run()


# ---- status -----------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    from supervisor.status import read_status

    _, config = _config(args)
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
    from supervisor.control import CommandError, ControlUnavailable, request

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
              "IN FAILED", "RESTARTS", "RSS", "CPU%", "LAST ERROR"]
    rows = [header]
    for tid, t in status.get("tenants", {}).items():
        age = t.get("last_heartbeat_age")
        rss = t.get("rss_bytes")
        rows.append([
            tid, t.get("name") or "", str(t.get("pid") or "-"), t.get("state") or "-",
            t.get("mode") or "-", f"{age:.1f}s ago" if isinstance(age, (int, float)) else "-",
            str(t.get("processed", 0)), str(t.get("failed", 0)),
            "-" if t.get("failed_in_ledger") is None else str(t["failed_in_ledger"]),
            str(t.get("restarts", 0)),
            f"{rss / 1048576:.1f}M" if rss else "-",
            f"{t['cpu_percent']:.2f}" if t.get("cpu_percent") is not None else "-",
            (t.get("last_error") or "")[:80],
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# ---- reload / stop ----------------------------------------------------------------------

def _running_pid(config: Config) -> int:
    pid = read_pid(Path(config.supervisor.state_dir))
    if pid is None:
        raise ConfigError(f"no supervisor is running with state_dir {config.supervisor.state_dir}")
    return pid


def _ask_or_signal(config: Config, command: str, signum: signal.Signals) -> int:
    """The control socket first (it names what it did); the pid file and a signal when the
    supervisor does not answer there (an older one, or a socket that could not be created)."""
    from supervisor.control import CommandError, ControlUnavailable, request

    pid = _running_pid(config)
    try:
        request(Path(config.supervisor.state_dir), command)
    except (ControlUnavailable, CommandError):
        os.kill(pid, signum)
        print(f"sent {signum.name} to supervisor pid {pid}")
    else:
        print(f"asked supervisor pid {pid} to {command} ({signum.name}) over the control socket")
    return pid


def cmd_reload(args: argparse.Namespace) -> int:
    _, config = _config(args)
    _ask_or_signal(config, "reload", signal.SIGHUP)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    _, config = _config(args)
    pid = _ask_or_signal(config, "stop", signal.SIGTERM)
    deadline = time.monotonic() + args.wait
    while args.wait and time.monotonic() < deadline:
        if read_pid(Path(config.supervisor.state_dir)) is None:
            return 0
        time.sleep(0.1)
    if args.wait:
        print(f"{PROG}: supervisor pid {pid} still running after {args.wait:.0f}s", file=sys.stderr)
        return 1
    return 0


# ---- check ------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from supervisor.sources import SourceError, load_tenants
    from tenant_proc.probe import probe_tenant

    _, config = _config(args)
    try:
        load = load_tenants(config)
    except SourceError as exc:
        print(f"{PROG}: cannot read tenants: {exc}", file=sys.stderr)
        return 1
    wanted = set(args.tenant_ids)
    unknown = wanted - set(load.specs) - set(load.errors)
    failed = False
    for tid in sorted(unknown):
        print(f"{tid}: FAIL unknown tenant id")
        failed = True
    for tid, (name, reason) in sorted(load.errors.items()):
        if not wanted or tid in wanted:
            print(f"{tid} ({name}): FAIL config: {reason}")
            failed = True
    for tid, spec in sorted(load.specs.items()):
        if wanted and tid not in wanted:
            continue
        result = probe_tenant(spec, timeout=args.timeout)
        print(f"{tid} ({spec.name}): {result.summary()}")
        failed = failed or not result.ok
    return 1 if failed else 0


# ---- cluster ----------------------------------------------------------------------------

def cmd_cluster(args: argparse.Namespace) -> int:
    """Live instances (seen within lease_ttl) and how many companies each holds."""
    from supervisor.source_supabase import TIMEOUT
    from tenant_proc.supabase_client import close_client, describe_error, make_client

    _, config = _config(args)
    if config.state.backend != "supabase" or config.state.supabase_key is None:
        raise ConfigError("idle-supervisor cluster needs [state] backend = \"supabase\" "
                          "(SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY)")
    key = config.state.supabase_key.reveal()
    client = make_client(config.state.supabase_url, key, timeout=TIMEOUT)
    try:
        rows = client.rpc("cluster_instances", {"p_ttl": config.cluster.lease_ttl}).execute().data
    except Exception as exc:
        print(f"{PROG}: cannot read the cluster: {describe_error(exc, key)}", file=sys.stderr)
        return 1
    finally:
        close_client(client)
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    table = [["INSTANCE", "HOST", "PID", "COMPANIES", "MAX", "LAST SEEN"]]
    for r in rows:
        table.append([str(r["instance_id"]), str(r.get("host") or "-"), str(r.get("pid") or "-"),
                      str(r["held"]), str(r.get("max_tenants") or "-"),
                      f"{float(r['last_seen_age']):.1f}s ago"])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print(f"{len(rows)} live instances, {sum(int(r['held']) for r in rows)} companies held "
          f"(lease_ttl {config.cluster.lease_ttl:g}s)")
    for row in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0
