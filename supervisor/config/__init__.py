"""The supervisor's config: settings dataclasses (settings.py, a vocabulary), TOML + environment
loading (load.py, env.py) and the timeouts derived from each other (timeouts.py). Imports only
supervisor.errors and tenant_proc.spec."""
