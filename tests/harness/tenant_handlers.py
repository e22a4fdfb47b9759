"""Handlers used by the tenant-process tests (importable in the forked child as tests.harness.tenant_handlers)."""
from __future__ import annotations

from tenant_proc.handlers import jsonl
from tenant_proc.handlers.loader import HandlerContext
from tenant_proc.message import Email


def poison(email: Email, context: HandlerContext) -> None:
    """Fails on every email whose subject contains POISON; writes the others like jsonl."""
    if "POISON" in email.subject:
        raise ValueError("boom")
    jsonl(email, context)


class Broken:
    """A handler class whose constructor fails: the tenant must exit with EXIT_CONFIG."""

    def __init__(self, options: dict) -> None:
        raise RuntimeError("cannot start")
