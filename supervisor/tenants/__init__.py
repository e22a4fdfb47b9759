"""Where the tenants come from: the config file's [[tenant]] tables or Supabase's companies table,
validated into TenantSpecs (rows.py, oauth_rows.py), and the cluster leases that decide which of
them this instance runs. Imports config/ and errors only."""
