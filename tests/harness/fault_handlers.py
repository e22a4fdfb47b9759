"""Handlers for the fault tests (importable by the supervisor as tests.harness.fault_handlers)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from tenant_proc.handlers import jsonl


def jsonl_then_die(email, context) -> None:
    """jsonl, then SIGKILL ourselves once per subject listed in options['die_after']: the effect
    is done but the ledger never hears of it, the exact window a real SIGKILL can hit."""
    jsonl(email, context)
    if email.subject in context.options.get("die_after", ()):
        marker = Path(context.options["marker_dir"]) / f"{email.tenant_id}-{email.uid}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def die_on_killer(email, context) -> None:
    """An email that kills its process every time (think: a C parser segfaulting on it)."""
    if "KILLER" in (email.subject or ""):
        os.kill(os.getpid(), signal.SIGKILL)
    jsonl(email, context)


def oversized_frame(email, context) -> None:
    """A handler that misuses its process's pipe to the supervisor: on a subject with OVERSIZED
    it writes a frame header announcing a terabyte (what a bug or hostile code in a handler
    could do). The supervisor must refuse the frame, not allocate or wait for it."""
    import struct

    jsonl(email, context)
    if "OVERSIZED" in (email.subject or ""):
        conn = context.keepalive.__self__.conn  # the tenant's Control pipe (bound method)
        os.write(conn.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 1 << 40))


def exit_on_crash_subject(email, context) -> None:
    """Handler code that ends its process the Python way (`sys.exit` in a library, a
    KeyboardInterrupt): a BaseException the mailbox does not catch, so the tenant crashes."""
    import sys

    if "CRASH" in (email.subject or ""):
        sys.exit("handler called sys.exit")
    jsonl(email, context)
