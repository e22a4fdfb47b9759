"""The simplest shipped handlers: jsonl (one JSON line per email in a shared file), log and null.

Each is called as handler(email, context); users name them `tenant_proc.handlers:jsonl` etc.
(handlers/__init__.py)."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson

from tenant_proc.handlers.loader import HandlerContext
from tenant_proc.message import Email, answering_fields


def jsonl(email: Email, context: HandlerContext) -> None:
    """Append one JSON line per email to options["path"].

    Many tenant processes append to the same file: one os.write of the whole line on an
    O_APPEND descriptor, under an exclusive flock, so lines never interleave.
    """
    path = _resolve_path(context, context.options["path"])
    line = orjson.dumps(_jsonl_record(email)) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if email.redelivered and _already_written(fd, email):
            # The process before us wrote this line and died before recording it as done.
            context.logger.info("uid %d redelivered: its line is already in %s", email.uid, path)
            return
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
    finally:
        os.close(fd)  # closing releases the lock


def _already_written(fd: int, email: Email) -> bool:
    """Does the file hold a line for this (tenant, folder, uidvalidity, uid)? Only asked for a
    redelivered email (rare), so one scan of the file is fine."""
    key = orjson.dumps({"tenant_id": email.tenant_id, "folder": email.folder, "uid": email.uid,
                        "uidvalidity": email.uidvalidity})[:-1] + b","  # the line's own prefix
    size = os.fstat(fd).st_size
    return size > 0 and (b"\n" + key) in b"\n" + os.pread(fd, size, 0)


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
