"""`idle-supervisor`'s parser and its commands run, reload, stop, check and cluster (status,
failed/retry and authorize have modules of their own beside this one).

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
from typing import Sequence

from supervisor.cli.args import EXIT_USAGE, PROG, load, tell_supervisor, with_config
from supervisor.cli.authorize import add_authorize_command
from supervisor.cli.failed import add_commands as add_failed_commands
from supervisor.cli.status import add_status_command
from supervisor.config.settings import Config
from supervisor.errors import ConfigError
from supervisor.service.logsetup import setup_logging
from supervisor.service.pidfile import AlreadyRunning, read_pid
from tenant_proc.deps import MissingDependency


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

    run = sub.add_parser("run", help="run the supervisor in the foreground")
    with_config(run)
    run.add_argument("--log-level", default=os.environ.get("IDLE_SUPERVISOR_LOG_LEVEL", "INFO"),
                     choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"])
    run.add_argument("--log-format", default=os.environ.get("IDLE_SUPERVISOR_LOG_FORMAT", "text"),
                     choices=["text", "json"])
    run.set_defaults(func=cmd_run)

    add_status_command(sub)

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

    add_failed_commands(sub)  # failed, retry
    add_authorize_command(sub)
    return parser


# ---- run --------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    path, config = load(args)
    from setproctitle import setproctitle

    from supervisor.arbiter.arbiter import Arbiter

    setproctitle(f"idle-supervisor: supervisor {config.path}")
    return Arbiter(path, config).run()


# ---- reload / stop ----------------------------------------------------------------------

def _ask_or_signal(config: Config, command: str, signum: signal.Signals) -> int:
    told = tell_supervisor(Path(config.supervisor.state_dir), command, signum)
    if told is None:
        raise ConfigError(f"no supervisor is running with state_dir {config.supervisor.state_dir}")
    pid, what = told
    print(what)
    return pid


def cmd_reload(args: argparse.Namespace) -> int:
    _, config = load(args)
    _ask_or_signal(config, "reload", signal.SIGHUP)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    _, config = load(args)
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
    from supervisor.errors import SourceError
    from supervisor.tenants.sources import load_tenants
    from tenant_proc.probe import probe_tenant

    _, config = load(args)
    try:
        tenants = load_tenants(config)
    except SourceError as exc:
        print(f"{PROG}: cannot read tenants: {exc}", file=sys.stderr)
        return 1
    wanted = set(args.tenant_ids)
    unknown = wanted - set(tenants.specs) - set(tenants.errors)
    failed = False
    for tid in sorted(unknown):
        print(f"{tid}: FAIL unknown tenant id")
        failed = True
    for tid, (name, reason) in sorted(tenants.errors.items()):
        if not wanted or tid in wanted:
            print(f"{tid} ({name}): FAIL config: {reason}")
            failed = True
    for tid, spec in sorted(tenants.specs.items()):
        if wanted and tid not in wanted:
            continue
        result = probe_tenant(spec, timeout=args.timeout)
        print(f"{tid} ({spec.name}): {result.summary()}")
        failed = failed or not result.ok
    return 1 if failed else 0


# ---- cluster ----------------------------------------------------------------------------

def cmd_cluster(args: argparse.Namespace) -> int:
    """Live instances (seen within lease_ttl) and how many companies each holds."""
    from supervisor.tenants.companies import TIMEOUT
    from tenant_proc.http_clients.supabase import close_client, describe_error, make_client

    _, config = load(args)
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
