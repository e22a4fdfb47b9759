"""Where a rotated refresh token is kept, so a restart never loses access.

Microsoft rotates delegated refresh tokens on use (and may refuse the old one later): the new
one is written to the state backend before the process drops the old one. Beside the token sits
a hash of the refresh token the operator configured (the "seed"): at start the stored token
wins unless the configured one changed since (the customer consented again and the operator
put in the new token), so a re-consent takes effect without touching the state.

- SQLite: table oauth_tokens in the tenant's checkpoints.sqlite3 (0600, as the ledger).
- Supabase: table public.oauth_tokens (sql/004_oauth.sql).
Both are opened per operation: they are used once at start and once per rotation.
"""
from __future__ import annotations

import hashlib
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Protocol

from tenant_proc.spec import Secret, TenantSpec
from tenant_proc.store.api import StoreError

TABLE = "oauth_tokens"
SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    tenant_id TEXT PRIMARY KEY,
    refresh_token TEXT NOT NULL,
    seed_hash TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""


class StoredToken(NamedTuple):
    refresh_token: Secret
    seed_hash: str


class TokenStore(Protocol):
    def load(self, tenant_id: str) -> StoredToken | None: ...

    def save(self, tenant_id: str, refresh_token: Secret, seed_hash: str) -> None: ...


def seed_hash(refresh_token: Secret | None) -> str:
    return hashlib.sha256((refresh_token.reveal() if refresh_token else "").encode()).hexdigest()


def open_token_store(spec: TenantSpec) -> TokenStore:
    if spec.state.backend == "supabase":
        key = spec.state.supabase_key.reveal() if spec.state.supabase_key else ""
        return SupabaseTokenStore(spec.state.supabase_url, key, spec.state.request_timeout)
    from tenant_proc.store.sqlite import DB_NAME

    return SqliteTokenStore(Path(spec.state.state_dir) / DB_NAME)


class SqliteTokenStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        from tenant_proc.store.sqlite import prepare_file

        prepare_file(self.path)
        db = sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute(SQLITE_SCHEMA)
        return db

    def load(self, tenant_id: str) -> StoredToken | None:
        try:
            db = self._connect()
            try:
                row = db.execute(f"SELECT refresh_token, seed_hash FROM {TABLE} WHERE tenant_id = ?",
                                 (tenant_id,)).fetchone()
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the stored refresh token: {exc}") from None
        return StoredToken(Secret(row[0]), row[1]) if row else None

    def save(self, tenant_id: str, refresh_token: Secret, seed_hash: str) -> None:
        try:
            db = self._connect()
            try:
                # One autocommit statement: durable (WAL, or rollback journal) once it returns.
                db.execute(
                    f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET "
                    "refresh_token = excluded.refresh_token, seed_hash = excluded.seed_hash, "
                    "updated_at = excluded.updated_at",
                    (tenant_id, refresh_token.reveal(), seed_hash, time.time()))
            finally:
                db.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store the rotated refresh token: {exc}") from None


class SupabaseTokenStore:
    """Each request bounded as a whole by timeout (the state store's request bound, derived
    from heartbeat_timeout): a slow Supabase fails the step, never a heartbeat."""

    def __init__(self, url: str, key: str, timeout: float = 10.0) -> None:
        self._url = url
        self._key = key
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"SupabaseTokenStore(url={self._url!r})"

    def _call(self, what: str, tenant_id: str, action, token: Secret | None = None) -> object:
        from tenant_proc.http_clients.supabase import close_client, describe_error, make_client
        from tenant_proc.signin.errors import scrub

        try:
            client = make_client(self._url, self._key, timeout=self._timeout,
                                 total_timeout=self._timeout)
        except Exception as exc:
            raise StoreError(f"Supabase: {what} for tenant {tenant_id}: {describe_error(exc, self._key)}") from None
        try:
            return action(client)
        except Exception as exc:
            # scrub: a database error can quote the failing row, refresh token included.
            raise StoreError(f"Supabase: {what} for tenant {tenant_id} failed: "
                             f"{scrub(describe_error(exc, self._key), [token])}") from None
        finally:
            close_client(client)

    def load(self, tenant_id: str) -> StoredToken | None:
        rows = self._call("read the stored refresh token", tenant_id, lambda client: (
            client.table(TABLE).select("refresh_token,seed_hash").eq("company_id", tenant_id)
            .execute().data))
        if not rows:
            return None
        return StoredToken(Secret(rows[0]["refresh_token"]), rows[0]["seed_hash"])  # type: ignore[index]

    def save(self, tenant_id: str, refresh_token: Secret, seed_hash: str) -> None:
        row = {"company_id": tenant_id, "refresh_token": refresh_token.reveal(), "seed_hash": seed_hash,
               "updated_at": datetime.now(timezone.utc).isoformat()}
        self._call("store the rotated refresh token", tenant_id, lambda client: (
            client.table(TABLE).upsert(row, on_conflict="company_id", returning="minimal").execute()),
            token=refresh_token)
