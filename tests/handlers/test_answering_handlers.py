"""Every shipped handler carries the answering fields (issue 23): the webhook body (to the real
receiver), the jsonl line, supabase_insert's columns (real PostgreSQL through the
PostgREST-compatible server, sql/008; a table without them still gets its rows) and, for the
command handler, IDLE_AUTO and IDLE_IN_REPLY_TO."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from tenant_proc.handlers import command, jsonl, webhook
from tenant_proc.handlers.loader import HandlerContext, resolve_target
from tenant_proc.message import Envelope, parse_email
from tests.servers.postgres.pg import PostgresDatabase
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY, PostgrestServer
from tests.servers.webhook_receiver import WebhookReceiver

SECRET = "whsec-answering-0123456789"
RAW = (b"From: Anna <anna@customer.example>\r\nTo: support@acme.example\r\nSubject: Re: order 17\r\n"
       b"Message-ID: <q2@customer.example>\r\nReply-To: Anna Privat <anna@home.example>\r\n"
       b"In-Reply-To: <a1@acme.example>\r\nReferences: <q1@customer.example> <a1@acme.example>\r\n"
       b"List-Id: Customers <customers.acme.example>\r\nAuto-Submitted: auto-replied\r\n\r\nbody\r\n")
ANSWERING = {"reply_to": ["Anna Privat <anna@home.example>"], "in_reply_to": "<a1@acme.example>",
             "references": ["<q1@customer.example>", "<a1@acme.example>"],
             "list_id": "Customers <customers.acme.example>", "auto": "auto_reply", "from_self": False}


def _email(raw: bytes = RAW, uid: int = 7, own: tuple[str, ...] = ("support@acme.example",)):
    return parse_email(raw, Envelope("acme", "INBOX", uid, 42, len(raw), 100.0, 101.0, own_addresses=own))


def _context(tmp_path: Path | None = None, **options: object) -> HandlerContext:
    return HandlerContext(options=dict(options), logger=logging.getLogger("t"), tenant={"id": "acme"},
                          base_dir=str(tmp_path or "."))


def test_the_email_has_them():
    email = _email()
    assert {k: getattr(email, k) for k in ANSWERING} == ANSWERING
    assert _email(b"From: Support@acme.example\r\n\r\nx").from_self is True


def test_webhook_body(tmp_path):
    with WebhookReceiver(SECRET) as receiver:
        handler = webhook({"url": receiver.url, "secret": SECRET, "timeout": 2})
        try:
            handler(_email(), _context(tmp_path))
        finally:
            handler.close()
        [got] = receiver.requests()
    assert got.signature_ok
    assert {k: got.document[k] for k in ANSWERING} == ANSWERING


def test_jsonl_line(tmp_path):
    jsonl(_email(), _context(tmp_path, path="emails.jsonl"))
    [line] = (tmp_path / "emails.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert {k: record[k] for k in ANSWERING} == ANSWERING


def test_command_environment(tmp_path):
    script = ("import os; open('env.json', 'w').write(__import__('json').dumps("
              "[os.environ['IDLE_AUTO'], os.environ['IDLE_IN_REPLY_TO']]))")
    command(_email(), _context(tmp_path, argv=[sys.executable, "-c", script]))
    assert json.loads((tmp_path / "env.json").read_text()) == ["auto_reply", "<a1@acme.example>"]
    person = _email(b"From: a@b.example\r\nSubject: hi\r\n\r\nx")
    command(person, _context(tmp_path, argv=[sys.executable, "-c", script]))
    assert json.loads((tmp_path / "env.json").read_text()) == ["", ""]  # set, and empty


@pytest.fixture
def supabase_env(postgrest: PostgrestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", postgrest.url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", TEST_SERVICE_KEY)


@pytest.mark.integration
def test_supabase_insert_columns(supabase_env: None, pg_db: PostgresDatabase) -> None:
    handler = resolve_target("tenant_proc.handlers:supabase_insert")({})
    try:
        handler(_email(), _context())
        handler(_email(b"From: support@acme.example\r\nSubject: ours\r\n\r\nx", uid=8), _context())
    finally:
        handler.close()
    rows = pg_db.execute('SELECT reply_to, in_reply_to, "references", list_id, auto, from_self '
                         "FROM emails ORDER BY id")
    assert rows[0] == tuple(ANSWERING.values())
    assert rows[1] == ([], None, [], None, None, True)


@pytest.mark.integration
def test_supabase_insert_into_a_table_from_before_sql_008(supabase_env: None, pg_db: PostgresDatabase,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    pg_db.execute("CREATE TABLE old_copy (LIKE emails INCLUDING ALL)")
    pg_db.execute('ALTER TABLE old_copy DROP COLUMN reply_to, DROP COLUMN in_reply_to, '
                  'DROP COLUMN "references", DROP COLUMN list_id, DROP COLUMN auto, DROP COLUMN from_self')
    pg_db.execute("GRANT ALL ON old_copy TO service_role")
    handler = resolve_target("tenant_proc.handlers:supabase_insert")({"table": "old_copy"})
    with caplog.at_level(logging.WARNING, logger="t"):
        try:
            handler(_email(), _context())
            handler(_email(RAW.replace(b"<q2@", b"<q3@"), uid=8), _context())
        finally:
            handler.close()
    assert pg_db.execute("SELECT uid, message_id FROM old_copy ORDER BY uid") == [
        (7, "<q2@customer.example>"), (8, "<q3@customer.example>")]
    warnings = [r.getMessage() for r in caplog.records if "sql/008_answering.sql" in r.getMessage()]
    assert len(warnings) == 1 and TEST_SERVICE_KEY not in warnings[0]
