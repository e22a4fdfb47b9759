"""Handlers used only by the benchmarks (target = "bench.handlers:...").

Both take the time first, so what they record is the moment the handler was called.
"""
from __future__ import annotations

import os
import time

import orjson

_count = 0


def stamp(email, context) -> None:
    """One line per email: when the tenant noticed the mail and when the handler was called."""
    called_at = time.time()
    line = orjson.dumps({"tenant_id": email.tenant_id, "uid": email.uid,
                         "detected_at": email.detected_at, "called_at": called_at}) + b"\n"
    fd = os.open(context.options["path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)  # one small write on O_APPEND: lines never interleave
    finally:
        os.close(fd)


def every(email, context) -> None:
    """The null handler, plus a time stamp on the 1st and every Nth email (for a rate)."""
    global _count
    _count += 1
    if _count == 1 or _count % int(context.options.get("every", 1000)) == 0:
        line = orjson.dumps({"n": _count, "t": time.time()}) + b"\n"
        fd = os.open(context.options["path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


_profiler = None


def profiled(email, context) -> None:
    """every(), plus cProfile of the whole tenant process from the 1st to the last email
    (options: "total", "profile" = where the pstats file goes). Only for profiling a burst."""
    global _profiler
    import cProfile

    if _profiler is None:
        _profiler = cProfile.Profile()
        _profiler.enable()
    every(email, context)
    if _count == int(context.options["total"]):
        _profiler.disable()
        _profiler.dump_stats(context.options["profile"])
