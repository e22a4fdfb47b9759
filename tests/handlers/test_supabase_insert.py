"""The supabase_insert handler against a real PostgreSQL through the PostgREST-compatible test
server and real supabase-py: each email stored once, NUL stripped, the configured table, errors
retryable and keyless, the request bounded by the tenant's request timeout."""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone

import pytest

from tenant_proc.handlers.loader import HandlerContext, resolve_target
from tenant_proc.message import Email
from tests.servers.postgres.pg import PostgresDatabase
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY, PostgrestServer

pytestmark = pytest.mark.integration


def sample_email(uid: int = 5, **changes: object) -> Email:
    fields: dict[str, object] = dict(
        tenant_id="acme", folder="INBOX", uid=uid, uidvalidity=7, message_id=f"<{uid}@x>",
        subject="Hello\x00 there", from_="Ann <ann@example.test>", to=["bo@example.test"],
        date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), text="body", html="<p>body</p>",
        attachments=[{"name": "a.pdf", "content_type": "application/pdf", "size": 12}], raw=b"raw")
    fields.update(changes)
    return Email(**fields)  # type: ignore[arg-type]


# What the tenant process hands every handler call (its request bound at the default).
CONTEXT = HandlerContext(options={}, logger=logging.getLogger("test"), tenant={"id": "acme"})


@pytest.fixture
def handler_env(postgrest: PostgrestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", postgrest.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", TEST_SERVICE_KEY)


def test_supabase_insert_stores_each_email_once(handler_env: None, pg_db: PostgresDatabase) -> None:
    cls = resolve_target("tenant_proc.handlers:supabase_insert")
    handler = cls({})
    try:
        handler(sample_email(), CONTEXT)
        handler(sample_email(subject="Hello again"), CONTEXT)  # re-delivery after a crash
        handler(sample_email(uid=6, to=[], attachments=[], date=None, html=None), CONTEXT)
    finally:
        handler.close()
    rows = pg_db.execute('SELECT uid, subject, "from", "to", "date", "text", attachments '
                         "FROM emails ORDER BY uid")
    assert len(rows) == 2
    uid, subject, sender, to, date, text, attachments = rows[0]
    assert (uid, subject, sender, to, text) == (5, "Hello again", "Ann <ann@example.test>", ["bo@example.test"], "body")
    assert date == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert attachments == [{"name": "a.pdf", "content_type": "application/pdf", "size": 12}]
    assert rows[1][3] == [] and rows[1][4] is None


def test_supabase_insert_strips_nul_and_uses_the_configured_table(handler_env: None, pg_db: PostgresDatabase) -> None:
    pg_db.execute("CREATE TABLE inbox_copy (LIKE emails INCLUDING ALL)")
    pg_db.execute("GRANT ALL ON inbox_copy TO service_role")
    handler = resolve_target("tenant_proc.handlers:supabase_insert")({"table": "inbox_copy"})
    handler(sample_email(), CONTEXT)
    handler.close()
    assert pg_db.execute("SELECT subject FROM inbox_copy") == [("Hello there",)]
    assert pg_db.execute("SELECT count(*) FROM emails") == [(0,)]


def test_supabase_insert_needs_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    monkeypatch.delenv("SUPABASE_SERVICE_ROLE_KEY", raising=False)
    with pytest.raises(ValueError, match="SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"):
        resolve_target("tenant_proc.handlers:supabase_insert")({})


def test_supabase_insert_failure_is_retryable_and_keyless(handler_env: None, postgrest: PostgrestServer) -> None:
    handler = resolve_target("tenant_proc.handlers:supabase_insert")({})
    postgrest.go_down()
    with pytest.raises(RuntimeError) as err:
        handler(sample_email(), CONTEXT)
    assert TEST_SERVICE_KEY not in str(err.value)
    postgrest.come_up()
    handler(sample_email(), CONTEXT)  # the same instance recovers once Supabase is back
    handler.close()


def test_supabase_insert_request_is_bounded_by_the_tenants_request_timeout(
        handler_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """With heartbeat_timeout lowered, [state]'s derived request bound reaches the handler: one
    insert into a Supabase that trickles its answer gives up within it, not after 10 s (the tenant
    cannot beat inside the request and would be killed as hung)."""
    from tests.store.test_store_timeouts import trickle_forever

    with trickle_forever() as url:
        monkeypatch.setenv("SUPABASE_URL", url)
        handler = resolve_target("tenant_proc.handlers:supabase_insert")({})
        context = dataclasses.replace(CONTEXT, request_timeout=1.5)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="supabase_insert into emails"):
            handler(sample_email(), context)
        elapsed = time.monotonic() - started
        handler.close()
    assert elapsed < 6, elapsed  # 1.5 s budget (10 s before), generous for a loaded machine
