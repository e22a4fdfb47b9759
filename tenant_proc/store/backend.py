"""The tenant's state store, chosen by [state] backend: SQLite (embedded) or Supabase.

A module of its own so that neither backend imports the other; the Supabase one (and with it
supabase-py) is imported only when configured.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from tenant_proc.spec import TenantSpec
from tenant_proc.store.api import StateStore
from tenant_proc.store.sqlite import DB_NAME, SqliteStore


def open_store(spec: TenantSpec, keepalive: Callable[[], None] | None = None) -> StateStore:
    """keepalive: called before each request of a networked store (a heartbeat when due)."""
    if spec.state.backend == "supabase":
        # Imported lazily: the SQLite path must not need the supabase package installed.
        from tenant_proc.store.supabase import SupabaseStore

        key = spec.state.supabase_key.reveal() if spec.state.supabase_key else ""
        return SupabaseStore(spec.state.supabase_url, key, timeout=spec.state.request_timeout,
                             fencing_token=spec.fencing_token, keepalive=keepalive)
    return SqliteStore(Path(spec.state.state_dir) / DB_NAME)
