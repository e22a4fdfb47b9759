"""The per-tenant logger: every line names the company, so one shared log stays readable.

Log lines carry text from strangers (subjects, Message-IDs, addresses) and from customers
(company names), so the adapter renders each line itself:
- the company name is an argument, never part of the format string: `100% Nöjd AB` once made
  every line with arguments a `--- Logging error ---` traceback instead;
- each text argument is cut at MAX_ARG_CHARS and the line at MAX_LINE_CHARS: a 100 KB
  Message-ID is one short line, not 100 KB of log;
- a line that does not format (a handler's own bad call) is logged with its raw arguments,
  never dropped with a traceback.
Control characters (ANSI escapes, CR/LF from a header) are escaped by the text formatter
(escape_controls, used by supervisor/service/logsetup.py), for every line of every process.
"""
from __future__ import annotations

import logging
import re
import traceback
from typing import Any

LOGGER_NAME = "tenant"
MAX_ARG_CHARS = 300
MAX_LINE_CHARS = 4000
TRUNCATED_MARK = "…"

# C0 controls (CR, LF, ESC, NUL ...), DEL, C1 controls, and the Unicode line/paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`\\x1b[31m` and a CR/LF from a header become visible escapes, so a header can neither
    colour a terminal nor forge a second log line."""
    if not _CONTROLS.search(text):
        return text
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                         else f"\\u{ord(m.group()):04x}", text)


def bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + TRUNCATED_MARK


class TenantAdapter(logging.LoggerAdapter):
    """Prefixes every message with "[Company Name] "; the parent owns handlers and format."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = bounded(render(msg, args), MAX_LINE_CHARS)
        extra = {"tenant": self.extra["tenant_name"], **(kwargs.pop("extra", None) or {})}
        self.logger.log(level, "[%s] %s", self.extra["tenant_name"], text, extra=extra, **kwargs)


def render(msg: Any, args: tuple[Any, ...]) -> str:
    """msg % args with each text argument bounded; never raises."""
    text = str(msg)
    if not args:
        return text
    if len(args) == 1 and isinstance(args[0], dict):  # logging's mapping form: "%(key)s"
        args = ({k: _bounded_arg(v) for k, v in args[0].items()},)
        values: Any = args[0]
    else:
        values = tuple(_bounded_arg(a) for a in args)
    try:
        return text % values
    except Exception:
        return f"{text} {bounded(repr(values), MAX_LINE_CHARS)}"


def _bounded_arg(value: Any) -> Any:
    return bounded(value, MAX_ARG_CHARS) if isinstance(value, str) else value


def describe_exception(exc: BaseException) -> str:
    """One line for an exception nobody handled: its type, its text and where it was raised
    (the innermost frame), never a traceback. The operator sees what broke and the line to
    report; a traceback would spill many lines (and locals' text) into a shared log."""
    text = " ".join(str(exc).split())[:MAX_ARG_CHARS]
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"
    return f"{type(exc).__name__}{': ' + text if text else ''}{where}"


def tenant_logger(name: str) -> logging.LoggerAdapter:
    return TenantAdapter(logging.getLogger(LOGGER_NAME), {"tenant_name": name})
