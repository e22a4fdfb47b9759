"""Libraries the configured backends need, imported by the supervisor before it forks.

Imported here, once, every tenant shares their pages copy-on-write instead of importing its own
copy after the fork (supabase-py with pydantic is several MB per process). Imported only when
configured: a file-only deployment (tenants from TOML, state in SQLite) never loads supabase-py,
neither in the supervisor nor in a tenant (tests/deploy/test_railway.py checks both).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tenant_proc.deps import require

if TYPE_CHECKING:
    from supervisor.config.settings import Config

SUPABASE_INSTALL = "pip install 'supabase>=2.34,<3' 'httpx>=0.28' (or reinstall idle-supervisor)"


def preload_backends(config: Config) -> None:
    """Import what the tenants will need; MissingDependency (one line, exit 2) if it is absent."""
    if config.state.backend == "supabase" or config.tenants.source == "supabase":
        require("tenant_proc.store.supabase", "Supabase ([tenants] source / [state] backend)",
                SUPABASE_INSTALL)
