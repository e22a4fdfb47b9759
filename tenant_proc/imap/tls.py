"""The verifying TLS contexts of a company process: one per trust store, built in the parent.

Shared by the IMAP connection and the OAuth token requests (tenant_proc/signin/providers/http.py).
"""
from __future__ import annotations

import os
import ssl
from typing import Iterable

from tenant_proc.spec import TenantSpec

_contexts: dict[tuple[str | None, float], ssl.SSLContext] = {}


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """One verifying context per trust store, cached.

    The supervisor builds them before forking (preload_ssl_contexts), so every tenant shares
    the parent's copy: the system trust store alone costs a tenant ~3.8 MB when each process
    parses it itself. Keyed by the CA file's mtime so an updated private CA is reread.
    """
    key = (ca_file, os.stat(ca_file).st_mtime if ca_file else 0.0)
    context = _contexts.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=ca_file)
        _contexts[key] = context
    return context


def preload_ssl_contexts(specs: Iterable[TenantSpec]) -> None:
    """Parent side, before forking: build every context the tenants about to start will use."""
    for spec in specs:
        if spec.security != "plain":
            try:
                ssl_context(spec.ca_file)
            except (OSError, ssl.SSLError):
                pass  # the tenant reports the problem itself, as one clear line
