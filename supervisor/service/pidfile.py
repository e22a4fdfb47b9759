"""supervisor.pid: one supervisor per state_dir, found by `status`, `reload` and `stop`.

The lock (flock on the open file) is what guarantees uniqueness; the pid inside is only for
the CLI. The kernel drops the lock when the process dies, so a stale file never blocks a start.
Children must not keep the inherited descriptor or they would keep the lock alive (children/forking.py
closes every inherited fd in a new child).

Taking the lock is the supervisor's first touch of state_dir, so it secures the directory
first (tenant_proc/private_files.py: this user's, 0700) and never follows a link planted where
the pid file belongs: opening one used to truncate whatever it pointed to.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from supervisor.errors import ConfigError
from tenant_proc.private_files import UnsafePath, open_private, secure_dir

log = logging.getLogger("supervisor")

PID_FILE = "supervisor.pid"


class AlreadyRunning(Exception):
    pass


class PidFile:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PID_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Secure state_dir, then lock the pid file. Raises ConfigError (one line) when state_dir
        or the file is not safe to use, AlreadyRunning when another supervisor holds the lock."""
        try:
            widened = secure_dir(self.path.parent)
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        except (UnsafePath, OSError) as exc:
            raise ConfigError(str(exc)) from None
        if widened is not None:
            log.warning("state_dir %s was %o: made it 0700 (it holds the ledger and the control "
                        "socket)", self.path.parent, widened)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"another supervisor (pid {other}) is running with state_dir "
                                 f"{self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def read_pid(state_dir: Path) -> int | None:
    """The running supervisor's pid, or None if none holds the lock."""
    path = state_dir / PID_FILE
    try:
        # Any owner: root may ask about a service user's supervisor (docs/systemd.md); but never
        # through a link, and never blocking on a FIFO planted there.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None  # a link names no supervisor of ours
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds the lock: stale file
    finally:
        os.close(fd)
