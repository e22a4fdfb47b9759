"""Handlers used by the integration tests (importable by the supervisor as tests.harness.handlers_for_tests)."""
from __future__ import annotations

from tenant_proc.handlers import jsonl


def poison_aware(email, context) -> None:
    """Fails on every email whose subject contains POISON; records the others as jsonl does."""
    if "POISON" in (email.subject or ""):
        raise ValueError(f"cannot handle uid {email.uid}")
    jsonl(email, context)


def slow(email, context) -> None:
    """Takes options['seconds'] per email: lets a test stop a tenant in the middle of a handler."""
    import time

    time.sleep(float(context.options.get("seconds", 1)))
    jsonl(email, context)


def refuse_until_fixed(email, context) -> None:
    """A receiver that refuses everything (PermanentHandlerError: `failed` at once) until the file
    options['fixed'] exists, then records each email as jsonl does: `retry` after the fix."""
    from pathlib import Path

    from tenant_proc.handlers import PermanentHandlerError

    if not Path(context.options["fixed"]).exists():
        raise PermanentHandlerError("the receiver is not fixed yet")
    jsonl(email, context)
