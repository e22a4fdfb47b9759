"""Logging for the supervisor and, by inheritance over fork, every tenant process.

One line per event. Under journald (JOURNAL_STREAM names our stderr) no timestamp is printed:
the journal adds its own. --log-format json gives one JSON object per line for Railway's search.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import orjson

from tenant_proc.logs import escape_controls


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        tenant = getattr(record, "tenant", None)
        if tenant:
            entry["tenant"] = tenant
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """One event, one line: control characters in the message (ANSI escapes, CR/LF from an
    email header) are escaped, so mail can neither colour a terminal nor forge log lines.
    Tracebacks keep their own line breaks. (JSON lines escape them by themselves.)"""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def under_journald() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif under_journald():
        handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    # No format here shows where a call was made, its thread or its multiprocessing name:
    # not collecting them (the logging HOWTO's "Optimization") saves ~7 of ~46 us per line,
    # and a tenant logs a line per email. The pid stays (the JSON format shows it).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # imapclient logs every command at DEBUG including LOGIN: keep it quiet whatever the level,
    # a password must never reach a log.
    logging.getLogger("imapclient").setLevel(logging.WARNING)
