"""The ledger queries behind Message-ID deduplication, UIDVALIDITY reprocessing and the
`expunged`/`duplicate` statuses, on both backends (SQLite file, Supabase over real PostgreSQL)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tenant_proc.store.sqlite import SqliteStore
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY


@pytest.fixture(params=["sqlite", "supabase"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        s: Any = SqliteStore(tmp_path / "checkpoints.sqlite3")
    else:
        from tenant_proc.store.supabase import SupabaseStore
        from tests.store.test_supabase import add_company

        postgrest = request.getfixturevalue("postgrest")
        add_company(request.getfixturevalue("pg_db"), "acme")
        s = SupabaseStore(postgrest.url, TEST_SERVICE_KEY)
    yield s
    s.close()


def test_expunged_and_duplicate_finish_a_uid(store: Any) -> None:
    store.mark_done("acme", "INBOX", 7, 1, None, "expunged")
    store.mark_done("acme", "INBOX", 7, 2, "<a@x>", "duplicate")
    assert store.is_done("acme", "INBOX", 7, 1) and store.is_done("acme", "INBOX", 7, 2)
    store.mark_done("acme", "INBOX", 7, 1, None, "processed")  # a done row stays as it was
    assert store.load_checkpoint("acme", "INBOX") == (7, 2)


def test_handled_message_id_by_window_and_by_uidvalidity(store: Any) -> None:
    before = time.time() - 1
    store.mark_done("acme", "INBOX", 7, 1, "<a@x>", "processed")
    store.mark_done("acme", "INBOX", 7, 2, "<f@x>", "failed", "boom")
    assert store.handled_message_id("acme", "<a@x>", since=before)
    assert not store.handled_message_id("acme", "<a@x>", since=time.time() + 60)
    assert not store.handled_message_id("acme", "<f@x>")  # failed is not handled
    assert not store.handled_message_id("acme", "<a@x>", not_uidvalidity=7)
    assert store.handled_message_id("acme", "<a@x>", not_uidvalidity=8)
    assert not store.handled_message_id("other", "<a@x>")
    last = store.last_handled_at("acme", "INBOX", 7)
    assert last is not None and before <= last <= time.time() + 5
    assert store.last_handled_at("acme", "INBOX", 8) is None
