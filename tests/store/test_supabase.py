"""Supabase: the migration, the state store and the tenant source, against a real PostgreSQL
through the PostgREST-compatible test server and real supabase-py.

The supabase_insert handler is tested in tests/handlers/test_supabase_insert.py, end-to-end runs with
the real supervisor in tests/tenants/test_supabase_e2e.py.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg
import pytest

from supervisor.config.load import load_config
from supervisor.errors import SourceError
from supervisor.tenants.rows import build_tenant_specs
from tenant_proc.spec import Secret
from tenant_proc.store.api import Checkpoint, StoreError
from tenant_proc.store.supabase import SupabaseStore
from tests.servers.postgres.pg import PostgresDatabase, PostgresServer, migration_files
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY, PostgrestServer

pytestmark = pytest.mark.integration

TABLES = ("companies", "imap_checkpoints", "processed_emails", "emails")


def add_company(db: PostgresDatabase, cid: str, active: bool = True, **cols: object) -> None:
    row = {"id": cid, "name": f"{cid.title()} AB", "imap_host": "127.0.0.1", "imap_port": 10143,
           "imap_security": "plain", "imap_username": f"{cid}-user", "imap_password": f"{cid}-pw",
           "imap_folder": "INBOX", "active": active}
    row.update(cols)
    names = ", ".join(f'"{k}"' for k in row)
    db.execute(f"INSERT INTO companies ({names}) VALUES ({', '.join(['%s'] * len(row))})",
               tuple(row.values()))


# --- migration ---------------------------------------------------------------------------------

def test_migration_applies_to_an_empty_database_and_again(postgres_server: PostgresServer) -> None:
    db = postgres_server.create_database(migrate=False)
    try:
        assert migration_files()[0].name == "001_init.sql"
        db.apply_migrations()
        db.apply_migrations()  # idempotent: running it twice is harmless
        found = {r[0] for r in db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert set(TABLES) <= found
    finally:
        db.drop()


def test_rls_is_on_for_every_table(pg_db: PostgresDatabase) -> None:
    rows = dict(pg_db.execute(
        "SELECT relname, relrowsecurity FROM pg_class WHERE relname = ANY(%s)", (list(TABLES),)))
    assert rows == {t: True for t in TABLES}
    # ... and no policy exists: nobody but a BYPASSRLS role (service_role) sees a row.
    assert pg_db.execute("SELECT count(*) FROM pg_policies WHERE schemaname = 'public'") == [(0,)]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_browser_roles_cannot_read_companies(pg_db: PostgresDatabase, role: str) -> None:
    add_company(pg_db, "acme")
    with pg_db.connect() as conn:
        conn.execute(f"SET ROLE {role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT imap_password FROM companies").fetchall()


def test_rls_hides_rows_even_if_a_grant_slips_in(pg_db: PostgresDatabase) -> None:
    # Supabase's default privileges grant tables to anon; RLS without a policy still shows nothing.
    add_company(pg_db, "acme")
    pg_db.execute("GRANT SELECT ON companies TO anon")
    with pg_db.connect() as conn:
        conn.execute("SET ROLE anon")
        assert conn.execute("SELECT count(*) FROM companies").fetchone() == (0,)


def test_constraints_and_updated_at(pg_db: PostgresDatabase) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        add_company(pg_db, "bad", imap_security="ssl")
    with pytest.raises(psycopg.errors.CheckViolation):
        add_company(pg_db, "has space")
    add_company(pg_db, "acme")
    before = pg_db.execute("SELECT updated_at FROM companies")[0][0]
    pg_db.execute("UPDATE companies SET name = 'New'")
    assert pg_db.execute("SELECT updated_at FROM companies")[0][0] > before


# --- state store -------------------------------------------------------------------------------

@pytest.fixture
def store(postgrest: PostgrestServer, pg_db: PostgresDatabase):
    add_company(pg_db, "acme")
    s = SupabaseStore(postgrest.url, TEST_SERVICE_KEY)
    yield s
    s.close()


def test_checkpoint_roundtrip(store: SupabaseStore) -> None:
    assert store.load_checkpoint("acme", "INBOX") is None
    store.save_checkpoint("acme", "INBOX", Checkpoint(7, 10))
    assert store.load_checkpoint("acme", "INBOX") == Checkpoint(7, 10)
    store.save_checkpoint("acme", "INBOX", Checkpoint(8, 2))  # UIDVALIDITY change: set outright
    assert store.load_checkpoint("acme", "INBOX") == Checkpoint(8, 2)


def test_mark_done_moves_checkpoint_forward_only(store: SupabaseStore, postgrest: PostgrestServer) -> None:
    store.mark_done("acme", "INBOX", 7, 5, "<5@x>", "processed")
    assert store.load_checkpoint("acme", "INBOX") == Checkpoint(7, 5)  # created when missing
    store.mark_done("acme", "INBOX", 7, 9, "<9@x>", "processed")
    stale = SupabaseStore(postgrest.url, TEST_SERVICE_KEY)  # another process, behind the times
    stale.mark_done("acme", "INBOX", 7, 6, "<6@x>", "processed")
    stale.mark_done("acme", "INBOX", 6, 99, "<old@x>", "processed")  # a previous UIDVALIDITY
    stale.close()
    assert store.load_checkpoint("acme", "INBOX") == Checkpoint(7, 9)


def test_mark_done_is_idempotent(store: SupabaseStore, pg_db: PostgresDatabase) -> None:
    store.mark_done("acme", "INBOX", 7, 5, "<5@x>", "failed", "boom")
    store.mark_done("acme", "INBOX", 7, 5, "<5@x>", "failed", "boom")
    store.mark_done("acme", "INBOX", 7, 5, "<5@x>", "processed")  # a done row stays as it was
    rows = pg_db.execute("SELECT status, error, message_id FROM processed_emails")
    assert rows == [("failed", "boom", "<5@x>")]
    assert store.is_done("acme", "INBOX", 7, 5)
    assert not store.is_done("acme", "INBOX", 7, 6)
    assert not store.is_done("acme", "Sent", 7, 5)


def test_attempts_survive_a_new_client(store: SupabaseStore, postgrest: PostgrestServer,
                                       pg_db: PostgresDatabase) -> None:
    assert store.record_attempt_failure("acme", "INBOX", 7, 5, "<5@x>", "e1") == 1
    assert store.record_attempt_failure("acme", "INBOX", 7, 5, "<5@x>", "e2") == 2
    assert not store.is_done("acme", "INBOX", 7, 5)  # retrying is not done
    restarted = SupabaseStore(postgrest.url, TEST_SERVICE_KEY)  # e.g. after a child crash
    assert restarted.record_attempt_failure("acme", "INBOX", 7, 5, "<5@x>", "e3") == 3
    restarted.mark_done("acme", "INBOX", 7, 5, "<5@x>", "failed", "gave up")
    restarted.close()
    assert pg_db.execute("SELECT status, attempts, error FROM processed_emails") == [("failed", 3, "gave up")]
    assert store.is_done("acme", "INBOX", 7, 5)


def test_retried_email_that_succeeds_becomes_processed(store: SupabaseStore, pg_db: PostgresDatabase) -> None:
    store.record_attempt_failure("acme", "INBOX", 7, 5, "<5@x>", "flaky")
    store.mark_done("acme", "INBOX", 7, 5, "<5@x>", "processed")
    assert pg_db.execute("SELECT status, attempts, error FROM processed_emails") == [("processed", 1, None)]


def test_open_store_picks_supabase(postgrest: PostgrestServer) -> None:
    from tenant_proc.spec import StateSpec, TenantSpec
    from tenant_proc.store.backend import open_store

    spec = TenantSpec(id="acme", name="Acme", host="h", port=1, security="plain", username="u",
                      password=Secret("pw"), state=StateSpec(backend="supabase", supabase_url=postgrest.url,
                                                             supabase_key=Secret(TEST_SERVICE_KEY)))
    s = open_store(spec)
    try:
        assert isinstance(s, SupabaseStore)
        assert TEST_SERVICE_KEY not in repr(s)
    finally:
        s.close()


def test_unknown_company_is_a_clear_store_error(store: SupabaseStore) -> None:
    with pytest.raises(StoreError, match="'ghost' is not in the companies table"):
        store.mark_done("ghost", "INBOX", 1, 1, None, "processed")


@pytest.mark.parametrize("mode", ["down", "500", "503"])
def test_store_errors_never_carry_the_key(store: SupabaseStore, postgrest: PostgrestServer, mode: str) -> None:
    if mode == "down":
        postgrest.go_down()
    else:
        postgrest.fail_with(int(mode))
    for call in (lambda: store.load_checkpoint("acme", "INBOX"),
                 lambda: store.mark_done("acme", "INBOX", 1, 1, None, "processed"),
                 lambda: store.record_attempt_failure("acme", "INBOX", 1, 1, None, "x")):
        start = time.monotonic()
        with pytest.raises(StoreError) as err:
            call()
        assert time.monotonic() - start < 2.0  # no hidden retry schedule
        assert TEST_SERVICE_KEY not in str(err.value) and "\n" not in str(err.value)
        assert err.value.__cause__ is None and err.value.__suppress_context__


# --- tenant source -----------------------------------------------------------------------------

def supabase_config(tmp_path: Path, postgrest: PostgrestServer):
    path = tmp_path / "config.toml"
    path.write_text('[supervisor]\nstate_dir = "state"\n[tenants]\nsource = "supabase"\n')
    env = {"SUPABASE_URL": postgrest.url, "SUPABASE_SERVICE_ROLE_KEY": TEST_SERVICE_KEY}
    return load_config(path, env)


def test_fetch_maps_active_companies(postgrest: PostgrestServer, pg_db: PostgresDatabase, tmp_path: Path) -> None:
    from supervisor.tenants.companies import fetch_company_rows

    add_company(pg_db, "beta", imap_folder="Support")
    add_company(pg_db, "acme", imap_security="tls", imap_port=993)
    add_company(pg_db, "gone", active=False)
    rows = fetch_company_rows(postgrest.url, Secret(TEST_SERVICE_KEY))
    assert rows == [
        {"id": "acme", "name": "Acme AB", "host": "127.0.0.1", "port": 993, "security": "tls",
         "username": "acme-user", "password": "acme-pw", "folder": "INBOX"},
        {"id": "beta", "name": "Beta AB", "host": "127.0.0.1", "port": 10143, "security": "plain",
         "username": "beta-user", "password": "beta-pw", "folder": "Support"},
    ]
    load = build_tenant_specs(supabase_config(tmp_path, postgrest), rows, environ={})
    assert sorted(load.specs) == ["acme", "beta"] and load.errors == {}
    assert load.specs["beta"].folder == "Support"
    assert load.specs["acme"].password.reveal() == "acme-pw"
    assert load.specs["acme"].state.backend == "supabase"


def test_a_malformed_row_skips_only_that_company(postgrest: PostgrestServer, pg_db: PostgresDatabase,
                                                  tmp_path: Path) -> None:
    from supervisor.tenants.companies import fetch_company_rows

    add_company(pg_db, "acme")
    add_company(pg_db, "broken", imap_username=" ")
    load = build_tenant_specs(supabase_config(tmp_path, postgrest),
                              fetch_company_rows(postgrest.url, Secret(TEST_SERVICE_KEY)), environ={})
    assert list(load.specs) == ["acme"]
    assert "username" in load.errors["broken"][1]


def test_fetch_reads_past_the_servers_row_cap(pg_db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    import supervisor.tenants.companies as source

    for i in range(23):
        add_company(pg_db, f"c{i:02d}")
    monkeypatch.setattr(source, "PAGE_SIZE", 10)
    # max_rows below the page size, as a Supabase project with a lowered db-max-rows would be.
    with PostgrestServer(pg_db.dsn, TEST_SERVICE_KEY, max_rows=7) as api:
        rows = source.fetch_company_rows(api.url, Secret(TEST_SERVICE_KEY))
    assert [r["id"] for r in rows] == [f"c{i:02d}" for i in range(23)]


def test_fetch_leaves_no_thread_or_socket_behind(postgrest: PostgrestServer, pg_db: PostgresDatabase) -> None:
    # The supervisor forks after reading companies: it must stay single-threaded with no open pool.
    from supervisor.tenants.companies import fetch_company_rows

    def own_threads() -> set[int | None]:  # everything but the in-process test server's threads
        return {t.ident for t in threading.enumerate()
                if not t.name.startswith("postgrest-test") and "process_request" not in t.name}

    add_company(pg_db, "acme")
    fetch_company_rows(postgrest.url, Secret(TEST_SERVICE_KEY))
    threads, fds = own_threads(), len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        fetch_company_rows(postgrest.url, Secret(TEST_SERVICE_KEY))
    assert own_threads() == threads
    # The in-process test server holds the server side of each connection until its handler
    # thread sees EOF: give it a moment. A leaked client pool would leave 10 sockets open.
    deadline = time.monotonic() + 3
    while len(os.listdir("/proc/self/fd")) > fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= fds


@pytest.mark.parametrize("mode", ["down", "500", "503", "wrong-key", "bad-url"])
def test_fetch_errors_are_one_line_without_the_key(postgrest: PostgrestServer, pg_db: PostgresDatabase,
                                                    mode: str) -> None:
    from supervisor.tenants.companies import fetch_company_rows

    add_company(pg_db, "acme")
    url, key = postgrest.url, TEST_SERVICE_KEY
    if mode == "down":
        postgrest.go_down()
    elif mode in ("500", "503"):
        postgrest.fail_with(int(mode))
    elif mode == "wrong-key":
        key = TEST_SERVICE_KEY + "x"
    else:
        url = "ftp://nowhere"
    start = time.monotonic()
    with pytest.raises(SourceError) as err:
        fetch_company_rows(url, Secret(key))
    assert time.monotonic() - start < 2.0  # no 1 + 2 + 4 s retry schedule
    text = str(err.value)
    assert key not in text and TEST_SERVICE_KEY not in text
    assert "\n" not in text and text
    assert err.value.__cause__ is None and err.value.__suppress_context__
    if mode == "wrong-key":
        assert "Invalid API key" in text


def test_fetch_answer_with_a_key_echoed_is_scrubbed(postgrest: PostgrestServer) -> None:
    # A misbehaving proxy that echoes request headers into its error page must not leak the key.
    from supervisor.tenants.companies import fetch_company_rows

    postgrest.fail_with(502, f"bad gateway; apikey={TEST_SERVICE_KEY}", content_type="text/plain")
    with pytest.raises(SourceError) as err:
        fetch_company_rows(postgrest.url, Secret(TEST_SERVICE_KEY))
    assert TEST_SERVICE_KEY not in str(err.value) and "***" in str(err.value)


# --- the README's SQL --------------------------------------------------------------------------

def test_the_docs_sql_examples_run(pg_db: PostgresDatabase) -> None:
    # The README's "Deploying with Supabase" is what users paste into the SQL editor: it must
    # work on this schema.
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    doc = readme.split("## Deploying with Supabase", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 3
    for block in blocks:
        pg_db.execute(block)
    assert pg_db.execute("SELECT id, imap_folder, active FROM companies") == [("acme", "INBOX", True)]
