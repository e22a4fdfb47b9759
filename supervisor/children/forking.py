"""Forking a tenant process, and what a fork copies that the child must not keep.

The arbiter decides when to start, stop and reap; this module knows how: one os.fork() per
tenant with its own duplex Pipe and exit sentinel, the child-side closing of inherited
descriptors, signalling, and (as PID 1) reaping orphans without stealing the tenants' exit
statuses.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from typing import Any

from ipc import protocol
from ipc.framing import FrameReader, FrameWriter
from ipc.poll import readable_fds
from supervisor.children.entry import child_entry
from tenant_proc.spec import TenantSpec


class TenantProcess:
    """One forked tenant: its pid, the read end of its exit pipe (readable at EOF once it has
    exited, for the event loop), and its exit code once reaped.

    Our own os.fork(), not multiprocessing.Process: a Process child runs multiprocessing's
    bootstrap, which drops the parent's registry of every sibling (1,000 Process and Finalize
    objects). Each decref writes to a page shared with the parent and makes it private: that
    was most of why a tenant's unique memory grew with the number of tenants (bench/memory.py).
    """

    def __init__(self, pid: int, sentinel: int) -> None:
        self.pid = pid
        self.sentinel = sentinel
        self.exitcode: int | None = None
        self._sentinel_open = True

    def is_alive(self) -> bool:
        """False once exited; reaps it (waitpid) the first time it sees the exit."""
        if self.exitcode is not None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: the exit status is lost, not the exit
            self.exitcode = UNKNOWN_EXIT
            return False
        if pid == 0:
            return True
        self.exitcode = os.waitstatus_to_exitcode(status)  # -N for "killed by signal N"
        return False

    def join(self, timeout: float) -> None:
        """Wait up to timeout for the exit (the sentinel reads EOF), then reap."""
        if self.exitcode is None and self._sentinel_open:
            readable_fds([self.sentinel], timeout)
        self.is_alive()

    def close(self) -> None:
        if self._sentinel_open:
            self._sentinel_open = False
            os.close(self.sentinel)


UNKNOWN_EXIT = 255


@dataclass
class ChildHandle:
    """The parent's end of one tenant: its process and its pipe. The pipe end is non-blocking
    and read and written only through reader/writer (ipc/framing.py): a child stalled half-way
    through a frame, or not reading its own end, can never block the supervisor's loop."""

    process: TenantProcess
    conn: Connection  # parent end of the pipe (for its fd and close(); never recv/send on it)
    conn_open: bool = True
    # (pgid, leader start time) of the command its handler is running (IPC command_group):
    # killed when this child is collected dead with it still set (supervisor/children/command_groups.py).
    command_group: tuple[int, int | None] | None = None

    def __post_init__(self) -> None:
        os.set_blocking(self.conn.fileno(), False)
        self.reader = FrameReader(self.conn.fileno())
        self.writer = FrameWriter(self.conn.fileno())

    def send(self, message: dict[str, Any]) -> bool:
        """Queue a message for the child; False when it cannot go (the child is gone or has
        not read its pipe for a long while: a stop is backed by SIGTERM anyway)."""
        return self.conn_open and self.writer.send(protocol.encode(message))


class ShutdownPipe:
    """One pipe whose read end every tenant inherits; closing the write end tells all of them
    "the supervisor stops" in one system call (EOF wakes every reader at once).

    Why not a stop message and a SIGTERM per tenant only: each of those wakes one sleeping
    child, and a freshly woken child preempts the supervisor. At 1,000 tenants the loop of
    1,000 sends and kills took 5 s (strace: the first kill at +0.003 s, the last at +5.0 s), and
    no exit could be reaped before it ended. The write end is the parent's alone (children
    close it with every other inherited fd), so a supervisor killed by SIGKILL closes it too.
    """

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()  # only ever polled, never read

    def close_write(self) -> None:
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None

    @property
    def open(self) -> bool:
        return self._write_fd is not None


def fork_tenant(spec: TenantSpec, shutdown_fd: int | None = None) -> ChildHandle:
    """Start one tenant process; raises OSError when the fork fails (nothing left open).
    shutdown_fd: the read end of the ShutdownPipe, kept open in the child."""
    parent_conn, child_conn = Pipe(duplex=True)
    # The exit sentinel: only the child holds the write end, so EOF on the read end means
    # it has exited, however it died.
    sentinel_r, sentinel_w = os.pipe()
    parent_pid = os.getpid()
    # As multiprocessing does: text still buffered here would be written again by the child.
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        pid = os.fork()
    except OSError:
        for fd in (sentinel_r, sentinel_w):
            os.close(fd)
        parent_conn.close()
        child_conn.close()
        raise
    if pid == 0:  # the child: never returns into the parent's code
        code = 1
        try:
            keep = {child_conn.fileno(), sentinel_w}
            if shutdown_fd is not None:
                keep.add(shutdown_fd)
            close_all_fds_except(keep)
            code = child_entry(spec, child_conn, parent_pid, shutdown_fd)
        finally:
            os._exit(code)
    os.close(sentinel_w)
    child_conn.close()  # else EOF never arrives when the child dies
    return ChildHandle(process=TenantProcess(pid, sentinel_r), conn=parent_conn)


def close_all_fds_except(keep: set[int]) -> None:
    """In a fresh child: close every inherited fd but stdio and keep, by number.

    By number, not through the parent's objects (sibling Connections, the epoll set, the
    pid-file lock, the wake-up socketpair, the metrics socket): touching a thousand parent
    objects would copy their pages. Those objects stay unused in the child, which ends with
    os._exit, so no finalizer can later close a reused fd number.
    """
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, MAX_FD)


MAX_FD = 1 << 20  # above any RLIMIT_NOFILE in use; closerange() is one close_range() call


def send_signal(pid: int | None, signum: int) -> None:
    if pid:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def reap_orphans(ours: set[int]) -> None:
    """As PID 1, reap zombies that are not our tenants (grandchildren of a handler command).

    WNOWAIT peeks first: a tenant's exit must stay for TenantProcess.is_alive() to collect,
    or the arbiter would never learn its exit code (supervision rule 3).
    """
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in ours:
            return
        os.waitpid(info.si_pid, 0)
