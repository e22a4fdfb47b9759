"""What a supervisor log written during a test must never contain.

The product's rule (README "Operations", supervisor/cli/program.py, tenant_proc/main.py): every failure an
operator can meet is one line naming the exception and where, never a traceback. A traceback in a
supervisor log therefore means an exception nobody handled (a bug) or a log call that broke
(`--- Logging error ---`, e.g. a `%` in a format); the one-line reports of an unhandled exception
(`crashed: ...`, `loop tick failed: ...`) mean the same. tests/conftest.py runs this over the log
of every supervisor a test started; a test whose traceback or crash *is* the behaviour under test
says so with `@pytest.mark.allow_traceback("why")`.
"""
from __future__ import annotations

# Python's own markers: an uncaught or logged exception, and logging's handleError() report.
# In JSON log lines the traceback is one escaped string, but it starts with the same words.
# Then the product's one-line forms of an exception nobody handled, which replace a traceback
# and mean the same (a bug, unless a test provokes it): a tenant process that crashed
# (tenant_proc/main.py) and a failed supervisor loop tick (supervisor/arbiter/arbiter.py).
TRACEBACK_MARKERS = ("Traceback (most recent call last)", "--- Logging error ---",
                     "crashed: ", "loop tick failed: ")
EXCERPT_LINES_BEFORE = 2
EXCERPT_LINES_AFTER = 14


def find_tracebacks(text: str) -> list[str]:
    """One excerpt (a few lines before the marker, the traceback after it) per traceback found."""
    lines = text.splitlines()
    excerpts: list[str] = []
    skip_until = -1
    for number, line in enumerate(lines):
        if number <= skip_until or not any(marker in line for marker in TRACEBACK_MARKERS):
            continue
        start = max(0, number - EXCERPT_LINES_BEFORE)
        skip_until = number + EXCERPT_LINES_AFTER
        excerpts.append("\n".join(lines[start:skip_until + 1]))
    return excerpts
