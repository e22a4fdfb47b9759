"""state_dir and the files in it, safe in a directory another local account could reach.

state_dir holds the ledger (senders, subjects), the pid file the CLI signals through, the
control socket that can stop the supervisor and, by default, emails.jsonl. Whoever can create
entries in it can plant a symbolic link where one of these files belongs, and a process that
opens it then truncates or appends to the link's target (the pid file once truncated whatever
it pointed to). So:
- state_dir must belong to the user running the supervisor, and is made 0700 (an existing one
  too); one owned by another account is refused with one line: its owner could replace any
  file in it, whatever the mode;
- files are opened with O_NOFOLLOW (a link is refused, never followed), must be regular files
  of this user, and are made 0600. SQLite opens its files itself: `refuse_links` checks the
  database's companions before it does, and the 0700 directory keeps anyone else from putting
  a link there afterwards.

Used by both sides (the supervisor's pid file, the tenant's SQLite store, the jsonl handler),
so it lives here, below both, and imports nothing of the project.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")  # files SQLite creates beside a database


class UnsafePath(Exception):
    """A path in state_dir another account could control: one line saying which and why."""


def secure_dir(path: Path) -> int | None:
    """Create `path` 0700 if missing, else make it 0700. Returns the mode it had when that was
    wider (for the caller to log), None otherwise. Raises UnsafePath if another user owns it."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # state_dir itself may be a link (/var/lib/x -> /data/x): what counts is the directory.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafePath(f"state_dir {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise UnsafePath(
                f"state_dir {path} belongs to uid {info.st_uid}, not to uid {os.geteuid()} that "
                f"runs idle-supervisor: its owner could replace any file in it; chown it to uid "
                f"{os.geteuid()}, or set state_dir to a directory of its own (e.g. {path / 'state'}, "
                f"created 0700)")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            os.fchmod(fd, DIR_MODE)
            return mode
        return None
    finally:
        os.close(fd)


def open_private(path: Path, flags: int) -> int:
    """os.open that never follows a link at `path`, creates 0600, and accepts only a regular
    file of this user (made 0600 if it was wider). The caller closes the descriptor."""
    try:
        # O_NONBLOCK: a FIFO planted there must not hang the open (no effect on regular files).
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link: refusing to follow it "
                             f"(remove it; nothing but idle-supervisor should write there)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{path} is not a regular file: refusing to use it")
        if info.st_uid != os.geteuid():
            raise UnsafePath(f"{path} belongs to uid {info.st_uid}, not to uid {os.geteuid()} "
                             f"that runs idle-supervisor: refusing to use it")
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, FILE_MODE)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_sqlite_file(path: Path) -> None:
    """A SQLite database that is a regular file of ours, 0600, with no link where SQLite will
    open its files: SQLite follows links, so one planted there would have it write into the
    link's target. The state store and the jsonl handler's index both open theirs through it."""
    os.close(open_private(path, os.O_CREAT | os.O_RDWR))
    refuse_links(*(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS))


def refuse_links(*paths: Path) -> None:
    """For files another library opens itself (SQLite's -wal, -shm, -journal)."""
    for path in paths:
        if path.is_symlink():
            raise UnsafePath(f"{path} is a symbolic link: refusing to follow it "
                             f"(remove it; nothing but idle-supervisor should write there)")
