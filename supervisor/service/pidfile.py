"""supervisor.pid: one supervisor per state_dir, found by `status`, `reload` and `stop`.

The lock (flock on the open file) is what guarantees uniqueness; the pid inside is only for
the CLI. The kernel drops the lock when the process dies, so a stale file never blocks a start.
Children must not keep the inherited descriptor or they would keep the lock alive (children/forking.py
closes every inherited fd in a new child).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

PID_FILE = "supervisor.pid"


class AlreadyRunning(Exception):
    pass


class PidFile:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PID_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
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
