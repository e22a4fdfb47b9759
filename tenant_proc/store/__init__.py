"""Checkpoints and the processed/failed ledger: the interface (api.py), SQLite and Supabase
backends, the choice between them (backend.py), and the failed-email view for `failed`/`retry`."""
