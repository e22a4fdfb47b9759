"""Tenant source `[tenants] source = "supabase"`: the active rows of the `companies` table.

Runs in the supervisor (parent) at start, every tenant_refresh and on SIGHUP. It must never
stall the loop for long or leave anything behind that a fork would copy, so: no retries, bounded
timeouts, no threads (supabase-py's sync client starts none), and the HTTP pool is closed before
returning. Any failure is one SourceError line without the key; the supervisor then keeps the
tenants it has and tries again next round.
"""
from __future__ import annotations

from typing import Any

from supervisor.errors import SourceError
from tenant_proc.spec import Secret

TABLE = "companies"
# Database column -> tenant-row key understood by rows.build_tenant_specs(). A row holds values,
# never names of the host's variables, programs or files (row_trust.py, unless trust_rows).
COLUMNS = {
    "id": "id",
    "name": "name",
    "imap_host": "host",
    "imap_port": "port",
    "imap_security": "security",
    "imap_username": "username",
    "imap_password": "password",
    "imap_folder": "folder",
    "imap_auth": "auth",  # sql/004_oauth.sql
    "webhook_url": "webhook_url",  # sql/005_webhook.sql
    "dedupe_window": "dedupe_window",  # sql/007_tenant_dedupe.sql (absent or NULL: the [imap] value, 7 days)
    "addresses": "addresses",  # sql/008_answering.sql: the mailbox's other addresses (text[])
    "skip": "skip",  # sql/008_answering.sql: classes kept from the handler (text[]; NULL: [imap] skip)
}
# sql/004_oauth.sql: the secret columns of an OAuth company -> keys of its [tenant.oauth] table
# (the jsonb column `oauth` holds the others).
OAUTH_SECRET_COLUMNS = {
    "oauth_client_secret": "client_secret",
    "oauth_refresh_token": "refresh_token",
    "oauth_service_account_json": "service_account_json",
    "oauth_certificate": "certificate",
}
# Supabase caps every answer at 1000 rows by default (PostgREST max-rows): read in pages, or the
# 1001st company would silently look "removed" and be stopped.
PAGE_SIZE = 500
TIMEOUT = 10.0  # seconds per request; the supervisor loop waits at most this per page


def fetch_company_rows(url: str, key: Secret) -> list[dict[str, Any]]:
    """Active companies as tenant rows, ordered by id. Raises SourceError (one line, no key)."""
    # Imported here so that file-only installs never need supabase-py.
    from tenant_proc.http_clients.supabase import close_client, describe_error, make_client, scrub

    secret = key.reveal()
    try:
        client = make_client(url, secret, timeout=TIMEOUT)
    except Exception as exc:  # supabase-py validates the URL's shape only
        raise SourceError(f"Supabase client for {scrub(url, secret)} not usable: "
                          f"{describe_error(exc, secret)}") from None
    try:
        return [to_tenant_row(row) for row in _read_pages(client)]
    except Exception as exc:
        # `from None`: the original exception's text and traceback stay out of the log.
        raise SourceError(f"cannot read companies from Supabase at {scrub(url, secret)}: "
                          f"{describe_error(exc, secret)}") from None
    finally:
        close_client(client)


def _read_pages(client: Any) -> list[dict[str, Any]]:
    """Keyset pages (id > last id seen): rows added or removed meanwhile cannot shift a page
    and make a company appear twice or not at all. Stops at the first empty page, so a server
    cap below PAGE_SIZE cannot end the listing early either."""
    rows: list[dict[str, Any]] = []
    # Every column: a database without sql/004 (no OAuth columns) must still list its companies.
    select = "*"
    while True:
        query = client.table(TABLE).select(select).eq("active", True).order("id").limit(PAGE_SIZE)
        if rows:
            query = query.gt("id", rows[-1]["id"])
        page = query.execute().data
        if not page:
            return rows
        rows.extend(page)


def to_tenant_row(row: dict[str, Any]) -> dict[str, Any]:
    """Rename columns; NULLs are left out so build_tenant_specs applies its defaults."""
    tenant = {key: row[column] for column, key in COLUMNS.items() if row.get(column) is not None}
    if tenant.get("auth") == "password":
        del tenant["auth"]  # the column's default: the row reads as before sql/004
    elif "auth" in tenant:
        oauth = dict(row.get("oauth") or {})
        oauth.update({key: row[column] for column, key in OAUTH_SECRET_COLUMNS.items()
                      if row.get(column) is not None})
        tenant["oauth"] = oauth
    return tenant
