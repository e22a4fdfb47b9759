"""The record of UIDs the server lists but does not return (issue 21 item 1), in both backends:
insert-or-ignore (a UID keeps its first sighting), scoped by tenant, folder and UIDVALIDITY,
durable across a reopen; Supabase's table from sql/009, and a database without it said once
(tenant_proc/mail/missing.py keeps the record in the process then)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import pytest

from tenant_proc.mail.missing import MissingUids
from tenant_proc.spec import ImapSettings, Secret, TenantSpec
from tenant_proc.store.api import Checkpoint, SchemaOutdated
from tenant_proc.store.sqlite import SqliteStore
from tests.store.test_supabase import add_company

T0 = 1_800_000_000.0


def _sqlite(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "checkpoints.sqlite3")


@pytest.fixture(params=["sqlite", "supabase"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """(open a store, the same store reopened) for each backend."""
    if request.param == "sqlite":
        yield (lambda: _sqlite(tmp_path)), None
        return
    pg_db = request.getfixturevalue("pg_db")
    postgrest = request.getfixturevalue("postgrest")
    from tenant_proc.store.supabase import SupabaseStore
    from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY

    for cid in ("acme", "other"):
        add_company(pg_db, cid)
    yield (lambda: SupabaseStore(postgrest.url, TEST_SERVICE_KEY)), pg_db


def test_recorded_uids_keep_their_first_sighting_and_survive_a_reopen(backend):
    open_store, _ = backend
    store = open_store()
    store.record_missing("acme", "INBOX", 7, [5, 9], T0)
    store.record_missing("acme", "INBOX", 7, [9, 12], T0 + 60)  # 9 again: first sighting stays
    store.record_missing("acme", "INBOX", 8, [5], T0)  # another UIDVALIDITY
    store.record_missing("acme", "Other", 7, [6], T0)  # another folder
    store.record_missing("other", "INBOX", 7, [4], T0)  # another tenant
    store.close()
    store = open_store()
    assert store.missing_uids("acme", "INBOX", 7) == {5: T0, 9: T0, 12: T0 + 60}
    assert list(store.missing_uids("acme", "INBOX", 7)) == [5, 9, 12]  # lowest first
    store.forget_missing("acme", "INBOX", 7, [5, 12, 99])
    assert store.missing_uids("acme", "INBOX", 7) == {9: T0}
    assert store.missing_uids("acme", "INBOX", 8) == {5: T0}
    assert store.missing_uids("acme", "Other", 7) == {6: T0}
    assert store.missing_uids("other", "INBOX", 7) == {4: T0}
    store.record_missing("acme", "INBOX", 7, [], T0)  # nothing to do, nothing sent
    store.forget_missing("acme", "INBOX", 7, [])
    store.close()


@pytest.mark.integration
def test_a_supabase_database_without_sql_009_is_said_once_and_kept_in_the_process(pg_db, postgrest, caplog):
    from tenant_proc.store.supabase import SupabaseStore
    from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY

    add_company(pg_db, "acme")
    pg_db.execute("DROP TABLE missing_uids")
    store = SupabaseStore(postgrest.url, TEST_SERVICE_KEY)
    with pytest.raises(SchemaOutdated, match="record missing UIDs failed"):
        store.record_missing("acme", "INBOX", 7, [5], T0)

    mailbox = _mailbox(store)
    missing = MissingUids(mailbox, logging.LoggerAdapter(logging.getLogger("tenant"), {}))
    with caplog.at_level(logging.WARNING, logger="tenant"):
        missing.load(7)
        missing.record([5])
        missing.record([6])
        missing.load(7)  # a reconnect: the process still knows them
    assert sorted(missing.known) == [5, 6] and not missing.durable
    said = [r.getMessage() for r in caplog.records if "sql/009_missing_uids.sql" in r.getMessage()]
    assert len(said) == 1
    missing.forget([5])
    assert sorted(missing.known) == [6]
    missing.load(8)  # another UIDVALIDITY: the old UIDs mean nothing
    assert missing.known == {}
    store.close()


def _mailbox(store: Any) -> Any:
    spec = TenantSpec(id="acme", name="Acme", host="h", port=993, security="tls", username="u",
                      password=Secret("x"), imap=ImapSettings())

    class _Mailbox:
        pass

    mailbox = _Mailbox()
    mailbox.spec, mailbox.store = spec, store  # type: ignore[attr-defined]
    mailbox.checkpoint = Checkpoint(7, 10)  # type: ignore[attr-defined]
    return mailbox
