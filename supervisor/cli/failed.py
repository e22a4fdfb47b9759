"""`idle-supervisor failed` and `idle-supervisor retry`: see and replay emails given up on.

Both read the ledger of the configured backend ([state]: state_dir/checkpoints.sqlite3, or
Supabase's processed_emails). `retry` marks rows `replay` and sends the running supervisor a
SIGHUP, which forwards `replay` to every tenant process; with no supervisor running the next
start picks the marks up (every tenant looks for them when it starts).

In cluster mode the company may run on another machine, which no signal from here reaches:
whichever instance holds its lease finds the marks at its next lease renewal (every
lease_ttl / 3; sql/010 cluster_replay_marks) and tells its company process. So `retry` sends no
signal then, and says which instance holds the company and how soon it hands the emails over.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from supervisor.cli.args import PROG, load, with_config
from supervisor.config.settings import Config
from supervisor.errors import ConfigError
from supervisor.service.pidfile import read_pid
from tenant_proc.store.api import StoreError
from tenant_proc.store.failed_ledger import FailedEmail, FailedLedger, ledger_for

# Done statuses `failed --status` lists: each row's error says why (for skipped: its class).
LISTED_STATUSES = ("failed", "skipped", "duplicate", "expunged")


def add_commands(sub: Any) -> None:
    failed = sub.add_parser("failed", help="list emails recorded as failed (or --status skipped, ...)")
    with_config(failed)
    failed.add_argument("--tenant", metavar="ID", help="only this tenant's")
    failed.add_argument("--status", choices=LISTED_STATUSES, default="failed",
                        help="list this ledger status instead: skipped (the class is the error), "
                             "duplicate, expunged")
    failed.add_argument("--json", action="store_true", help="a JSON list of objects")
    failed.set_defaults(func=cmd_failed)

    retry = sub.add_parser("retry", help="hand failed emails over again (all, or by UID)")
    with_config(retry)
    retry.add_argument("tenant", metavar="TENANT")
    retry.add_argument("uids", nargs="*", type=int, metavar="UID")
    retry.add_argument("--all", action="store_true", help="every failed email of the tenant")
    retry.set_defaults(func=cmd_retry)


def cmd_failed(args: argparse.Namespace) -> int:
    _, config = load(args)
    with open_ledger(config) as ledger:
        emails = ledger.list_failed(args.tenant, status=args.status)
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps([e.as_dict() for e in emails],
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(format_failed_table(emails, args.status))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    if args.all == bool(args.uids):
        raise ConfigError("retry needs UIDs or --all (not both)")
    _, config = load(args)
    with open_ledger(config) as ledger:
        marked = ledger.mark_replay(args.tenant, None if args.all else args.uids)
    missing = sorted(set(args.uids) - {e.uid for e in marked})
    if missing:
        print(f"{PROG}: tenant {args.tenant} has no failed email with UID "
              f"{', '.join(map(str, missing))}", file=sys.stderr)
    print(f"marked {len(marked)} email(s) of tenant {args.tenant} for another round")
    if marked and config.cluster.enabled:
        print(cluster_hand_over(config, args.tenant))
    elif marked:
        pid = read_pid(Path(config.supervisor.state_dir))
        if pid is None:
            print("the supervisor is not running: its next start hands them over")
        else:
            os.kill(pid, signal.SIGHUP)
            print(f"sent SIGHUP to supervisor pid {pid}: the tenant hands them over now")
    return 1 if missing else 0


def cluster_hand_over(config: Config, tenant_id: str) -> str:
    """What happens to a tenant's marks in cluster mode, and when (one line)."""
    from supervisor.tenants.cluster import MAX_CALL_TIMEOUT
    from tenant_proc.http_clients.supabase import close_client, describe_error, make_client

    within = (f"at its next lease renewal, within {config.cluster.lease_ttl / 3:g}s "
              "(lease_ttl / 3), once its company process is connected")
    assert config.state.supabase_key is not None  # [cluster] needs the supabase backend
    key = config.state.supabase_key.reveal()
    client = make_client(config.state.supabase_url, key, timeout=MAX_CALL_TIMEOUT)
    try:
        rows = client.rpc("company_lease_holder", {"p_company": tenant_id}).execute().data
    except Exception as exc:
        return (f"cluster mode: could not read which instance holds tenant {tenant_id} "
                f"({describe_error(exc, key)}); the one that does hands them over {within}")
    finally:
        close_client(client)
    holder = rows[0]["owner"] if rows else None
    if not holder:
        return (f"cluster mode: no live instance holds tenant {tenant_id} now; the one that "
                "claims it hands them over when it starts the company")
    return f"cluster mode: instance {holder} holds tenant {tenant_id} and hands them over {within}"


@contextmanager
def open_ledger(config: Config) -> Iterator[FailedLedger]:
    """The configured ledger, through the same store class the tenants use."""
    try:
        if config.state.backend == "supabase":
            from tenant_proc.store.supabase import SupabaseStore

            if config.state.supabase_key is None:
                raise ConfigError("[state] backend = \"supabase\" needs SUPABASE_URL and "
                                  "SUPABASE_SERVICE_ROLE_KEY")
            store: Any = SupabaseStore(config.state.supabase_url, config.state.supabase_key.reveal())
        else:
            from tenant_proc.store.sqlite import DB_NAME, SqliteStore

            path = Path(config.supervisor.state_dir) / DB_NAME
            if not path.exists():
                raise ConfigError(f"no ledger at {path}: the supervisor has not run there")
            store = SqliteStore(path)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    try:
        yield ledger_for(store)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        store.close()


def format_failed_table(emails: list[FailedEmail], status: str = "failed") -> str:
    if not emails:
        return f"no {status} emails"
    when = f"{status.upper()} AT"
    why = "CLASS" if status == "skipped" else "ERROR"  # a skipped row's error is its class
    rows = [["TENANT", "UID", "MESSAGE-ID", "ATTEMPTS", when, why]]
    for e in emails:
        rows.append([e.tenant_id, str(e.uid), (e.message_id or "-")[:60], str(e.attempts),
                     e.failed_at or "-", " ".join((e.error or "").split())[:100]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]).rstrip()
             for row in rows]
    return "\n".join(lines + [f"{len(emails)} {status} email(s)"])
