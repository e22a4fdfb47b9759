"""Forking a tenant process, and what a fork copies that the child must not keep.

The arbiter decides when to start, stop and reap; this module knows how: one fork-context
Process per tenant with its own duplex Pipe, the child-side clean-up of inherited descriptors,
signalling, and (as PID 1) reaping orphans without stealing the tenants' exit statuses.
"""
from __future__ import annotations

import fcntl
import os
import socket
import stat
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from supervisor.childproc import child_entry
from supervisor.pidfile import PidFile
from tenant_proc.spec import TenantSpec


@dataclass
class ChildHandle:
    process: Any  # multiprocessing.Process (fork context)
    conn: Connection  # parent end of the pipe
    conn_open: bool = True


@dataclass
class InheritedFds:
    """What a freshly forked child must close: the parent's ends and the parent's lock."""

    sibling_conns: list[Connection]
    own_parent_conn: Connection
    pidfile: PidFile
    wake_r: socket.socket | None
    wake_w: socket.socket | None
    metrics_sock: socket.socket | None = None
    selector: Any = None  # the parent's epoll set

    def close_all(self) -> None:
        for conn in [*self.sibling_conns, self.own_parent_conn]:
            try:
                conn.close()
            except OSError:
                pass
        close_inherited_pipes()
        if self.selector is not None:
            self.selector.close()
        self.pidfile.close_in_child()
        for sock in (self.wake_r, self.wake_w, self.metrics_sock):
            if sock is not None:
                sock.close()


def fork_tenant(ctx: Any, spec: TenantSpec, inherited_from_parent: dict[str, Any],
                sibling_conns: list[Connection]) -> ChildHandle:
    """Start one tenant process; raises OSError when the fork fails (nothing left open)."""
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    inherited = InheritedFds(sibling_conns, parent_conn, **inherited_from_parent)
    process = ctx.Process(
        target=child_entry,
        args=(spec, child_conn, inherited, os.getpid()),
        name=f"tenant:{spec.id}",
        daemon=True,  # multiprocessing's atexit terminates, never waits forever on, these
    )
    try:
        process.start()
    except OSError:
        parent_conn.close()
        child_conn.close()
        raise
    child_conn.close()  # else EOF never arrives when the child dies
    return ChildHandle(process=process, conn=parent_conn)


def close_inherited_pipes() -> None:
    """Close the read ends of inherited pipes in a fresh child.

    multiprocessing keeps, per child, the read end of its exit sentinel in the parent; every
    later sibling inherits those (a thousand tenants: a million kernel file references). Only
    read ends are closed: the child's own write end of its exit sentinel must stay open until
    it exits, or the parent's sentinel reads EOF at once and the loop sees a permanent "exit"
    (that mistake made an idle supervisor spin at 1,000 tenants). The siblings' parent-death
    write ends look the same from here and stay: one fd per sibling. No Python object in the
    child owns a pipe fd at this point (pipe Connections are socketpairs), so no later
    finalizer can close a reused fd number by mistake.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if (stat.S_ISFIFO(os.fstat(fd).st_mode)
                    and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY):
                os.close(fd)
        except OSError:
            pass  # the listdir's own fd, already gone


def send_signal(pid: int | None, signum: int) -> None:
    if pid:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def reap_orphans(ours: set[int]) -> None:
    """As PID 1, reap zombies that are not our tenants (grandchildren of a handler command).

    WNOWAIT peeks first: a tenant's exit must stay for multiprocessing to collect, or its
    Process object would never learn the exit code (supervision rule 3).
    """
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in ours:
            return
        os.waitpid(info.si_pid, 0)
