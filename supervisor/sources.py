"""Where tenants come from: the config file's [[tenant]] tables, or Supabase's companies table.

Both sources end in the same place, config.build_tenant_specs(), so a company row and a file
entry are validated the same way and feed the same reload diff.
"""
from __future__ import annotations

from supervisor.config import Config
from supervisor.tenant_rows import TenantLoad, build_tenant_specs


class SourceError(Exception):
    """The tenant source could not be read (unreachable, error answer). One clear line, no secret.

    The supervisor keeps running the tenants it has and tries again next round.
    """


def load_tenants(config: Config) -> TenantLoad:
    if config.tenants.source == "supabase":
        # Imported lazily: file-only installs need not have supabase-py importable.
        from supervisor.config import supabase_credentials
        from supervisor.source_supabase import fetch_company_rows

        url, key = supabase_credentials(_environ())
        rows = fetch_company_rows(url, key)
        return build_tenant_specs(config, rows)
    return build_tenant_specs(config, config.raw_tenants)


def _environ():
    import os

    return os.environ
