"""The first code a forked tenant process runs, before tenant_proc takes over.

It undoes what the fork copied from the parent and the child must not keep: the parent's
signal handlers and wake-up fd, the other children's pipe ends (or their EOF never arrives),
the pid-file lock, systemd's notify socket. Then it hands over to tenant_proc.main.
"""
from __future__ import annotations

# Imported here, in the parent, before the first fork: every child then shares these modules'
# pages copy-on-write instead of importing (and owning) its own copy of imapclient, ssl,
# sqlite3, email parsing and the tenant code. Lazily importing them in the child cost ~6 MB
# of unique memory per tenant process (bench/memory.py).
import email.feedparser  # noqa: F401  (parse_email, on the first message)
import email.parser  # noqa: F401
import email.policy  # noqa: F401
import signal
from multiprocessing.connection import Connection
from typing import NoReturn

from tenant_proc.main import run_tenant
from tenant_proc.spec import TenantSpec


def child_entry(spec: TenantSpec, conn: Connection, parent_pid: int,
                shutdown_fd: int | None = None) -> NoReturn:
    """Runs right after the fork, once forking.py has closed the inherited descriptors
    (sdnotify's socket is closed by its own at-fork hook)."""
    signal.set_wakeup_fd(-1)  # the parent's wake-up fd number is closed, or reused, here
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    run_tenant(spec, conn, parent_pid, shutdown_fd)
