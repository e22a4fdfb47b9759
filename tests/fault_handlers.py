"""Handlers for the fault tests (importable by the supervisor as tests.fault_handlers)."""
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
