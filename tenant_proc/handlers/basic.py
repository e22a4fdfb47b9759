"""The simplest shipped handlers: jsonl (one JSON line per email in a shared file), log and null.

Each is called as handler(email, context); users name them `tenant_proc.handlers:jsonl` etc.
(handlers/__init__.py)."""
from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson

from tenant_proc.handlers.jsonl_index import already_written, index_for
from tenant_proc.handlers.loader import HandlerContext
from tenant_proc.message import Email, answering_fields


def jsonl(email: Email, context: HandlerContext) -> None:
    """Append one JSON line per email to options["path"].

    Many tenant processes append to the same file: one os.write of the whole line on an
    O_APPEND descriptor, under an exclusive flock, so lines never interleave. Where each line
    goes is recorded first in an index beside the file (jsonl_index.py), so a redelivered
    email's "already written?" costs one lookup and one line, however large the file.
    """
    path = _resolve_path(context, context.options["path"])
    line = orjson.dumps(_jsonl_record(email)) + b"\n"
    key = (email.tenant_id, email.folder, email.uidvalidity, email.uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: a link planted at the path (a shared directory, /tmp) would have every
    # email's line appended to its target, a shell's rc file say. Its directory may be a link.
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(f"{path} is a symbolic link: the jsonl handler does not follow it") from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        index = index_for(path)
        if email.redelivered and already_written(fd, index, key, _line_prefix(email)):
            # The process before us wrote this line and died before recording it as done.
            context.logger.info("uid %d redelivered: its line is already in %s", email.uid, path)
            return
        index.record(key, os.fstat(fd).st_size, len(line))  # O_APPEND under our lock: lands there
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
    finally:
        os.close(fd)  # closing releases the lock


def _line_prefix(email: Email) -> bytes:
    """How this email's line begins (the first four fields of _jsonl_record, in its order)."""
    return orjson.dumps({"tenant_id": email.tenant_id, "folder": email.folder, "uid": email.uid,
                         "uidvalidity": email.uidvalidity})[:-1] + b","


def _jsonl_record(email: Email) -> dict[str, Any]:
    return {
        "tenant_id": email.tenant_id,
        "folder": email.folder,
        "uid": email.uid,
        "uidvalidity": email.uidvalidity,
        "message_id": email.message_id,
        "subject": email.subject,
        "from": email.from_,
        "to": email.to,
        "received_at": email.received_at,
        "detected_at": email.detected_at,
        "handled_at": time.time(),
        "size": email.size,
        "truncated": email.truncated,
        "attachments": [a.get("name") for a in email.attachments],
        **answering_fields(email),
    }


def _resolve_path(context: HandlerContext, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(context.base_dir) / path


def log(email: Email, context: HandlerContext) -> None:
    context.logger.info(
        "email uid %d %s from %s: %s", email.uid, email.message_id, email.from_, email.subject
    )


def null(email: Email, context: HandlerContext) -> None:
    """Does nothing: measures the supervisor without handler cost."""
