"""Where tenants come from: the config file's [[tenant]] tables, or Supabase's companies table.

Both sources end in the same place, rows.build_tenant_specs(), so a company row and a file
entry are validated the same way and feed the same reload diff.
"""
from __future__ import annotations

from supervisor.config.settings import Config
from supervisor.tenants.rows import TenantLoad, build_tenant_specs


def load_tenants(config: Config) -> TenantLoad:
    if config.tenants.source == "supabase":
        # Imported lazily: file-only installs need not have supabase-py importable.
        from supervisor.config.load import supabase_credentials
        from supervisor.tenants.companies import fetch_company_rows

        url, key = supabase_credentials(_environ())
        rows = fetch_company_rows(url, key)
        # A row is not the operator: it names no variable, program or file of this host
        # unless the config says so (row_trust.py).
        return build_tenant_specs(config, rows, trusted=config.tenants.trust_rows)
    return build_tenant_specs(config, config.raw_tenants)


def _environ():
    import os

    return os.environ
