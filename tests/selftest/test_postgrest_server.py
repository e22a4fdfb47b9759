"""The PostgREST-compatible test server, driven by the real supabase-py client.

If this server drifts from PostgREST, every Supabase test above it proves less, so its own
behaviour (filters, upserts, status codes, error bodies, down/erroring modes) is pinned here.
"""
from __future__ import annotations

import time

import httpx
import pytest
from postgrest.exceptions import APIError
from supabase import Client

from tenant_proc.http_clients.supabase import make_client
from tests.servers.postgres.pg import PostgresDatabase
from tests.servers.postgres.postgrest_server import TEST_ANON_KEY as SUPABASE_ANON_KEY
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY as SUPABASE_SERVICE_KEY
from tests.servers.postgres.postgrest_server import PostgrestServer

pytestmark = pytest.mark.integration


def client(server: PostgrestServer, key: str = SUPABASE_SERVICE_KEY) -> Client:
    return make_client(server.url, key, timeout=5)


def company(cid: str, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {"id": cid, "name": cid.title(), "imap_host": "127.0.0.1",
                              "imap_username": f"{cid}@example.test", "imap_password": "pw"}
    row.update(extra)
    return row


@pytest.fixture
def sb(postgrest: PostgrestServer) -> Client:
    return client(postgrest)


def test_insert_returns_representation_with_defaults(sb: Client) -> None:
    data = sb.table("companies").insert(company("acme")).execute().data
    assert data[0]["id"] == "acme"
    assert data[0]["imap_port"] == 993 and data[0]["imap_folder"] == "INBOX" and data[0]["active"] is True


def test_insert_minimal_returns_nothing(sb: Client) -> None:
    assert sb.table("companies").insert(company("acme"), returning="minimal").execute().data == []
    assert [r["id"] for r in sb.table("companies").select("id").execute().data] == ["acme"]


def test_bulk_insert_and_filters(sb: Client) -> None:
    # Same keys in every row: PostgREST sets a key missing from one row to NULL, not its default.
    rows = [company("a", imap_port=1, active=True, imap_folder="INBOX"),
            company("b", imap_port=2, active=False, imap_folder="INBOX"),
            company("c", imap_port=3, active=True, imap_folder="INBOX"),
            company("d", imap_port=4, active=True, imap_folder='Sales, "EU"')]
    assert len(sb.table("companies").insert(rows).execute().data) == 4
    ids = lambda q: [r["id"] for r in q.order("id").execute().data]  # noqa: E731
    t = lambda: sb.table("companies").select("id")  # noqa: E731
    assert ids(t().eq("imap_port", 2)) == ["b"]
    assert ids(t().neq("imap_port", 2)) == ["a", "c", "d"]
    assert ids(t().gt("imap_port", 2)) == ["c", "d"]
    assert ids(t().gte("imap_port", 2)) == ["b", "c", "d"]
    assert ids(t().lt("imap_port", 2)) == ["a"]
    assert ids(t().lte("imap_port", 2)) == ["a", "b"]
    assert ids(t().in_("id", ["a", "c", "zz"])) == ["a", "c"]
    assert ids(t().is_("active", False)) == ["b"]
    assert ids(t().eq("active", True)) == ["a", "c", "d"]
    # Reserved characters travel quoted and come back as one value, not as SQL or two items.
    assert ids(t().eq("imap_folder", 'Sales, "EU"')) == ["d"]
    assert ids(t().in_("imap_folder", ['Sales, "EU"', "x"])) == ["d"]
    assert ids(t().eq("id", "a' OR '1'='1")) == []
    desc = sb.table("companies").select("id").order("imap_port", desc=True).limit(2).execute().data
    assert [r["id"] for r in desc] == ["d", "c"]


def test_bulk_insert_missing_key_is_null_like_postgrest(sb: Client) -> None:
    with pytest.raises(APIError) as err:
        sb.table("companies").insert([company("a", imap_folder="X"), company("b")]).execute()
    assert err.value.code == "23502"  # b's imap_folder became NULL


def test_select_columns_only(sb: Client) -> None:
    sb.table("companies").insert(company("acme")).execute()
    assert sb.table("companies").select("id,imap_port").execute().data == [{"id": "acme", "imap_port": 993}]


def test_upsert_merge_and_ignore(sb: Client) -> None:
    sb.table("companies").insert(company("acme")).execute()
    merged = sb.table("companies").upsert(company("acme", name="Renamed"), on_conflict="id").execute().data
    assert merged[0]["name"] == "Renamed"
    ignored = sb.table("companies").upsert(company("acme", name="Ignored"), on_conflict="id",
                                           ignore_duplicates=True).execute().data
    assert ignored == []  # nothing inserted, nothing returned: PostgREST's behaviour
    assert sb.table("companies").select("name").execute().data == [{"name": "Renamed"}]


def test_upsert_on_composite_unique_key(sb: Client) -> None:
    sb.table("companies").insert(company("acme")).execute()
    key = {"company_id": "acme", "folder": "INBOX", "uidvalidity": 7, "uid": 3}
    for status in ("retrying", "processed"):
        sb.table("processed_emails").upsert({**key, "status": status},
                                            on_conflict="company_id,folder,uidvalidity,uid").execute()
    rows = sb.table("processed_emails").select("status").execute().data
    assert rows == [{"status": "processed"}]


def test_update_and_delete_with_filters(sb: Client) -> None:
    sb.table("companies").insert([company("a"), company("b")]).execute()
    updated = sb.table("companies").update({"active": False}).eq("id", "b").execute().data
    assert [(r["id"], r["active"]) for r in updated] == [("b", False)]
    deleted = sb.table("companies").delete().eq("active", False).execute().data
    assert [r["id"] for r in deleted] == ["b"]
    assert [r["id"] for r in sb.table("companies").select("id").execute().data] == ["a"]


def test_updated_at_trigger_runs_for_service_role(sb: Client) -> None:
    before = sb.table("companies").insert(company("acme")).execute().data[0]["updated_at"]
    time.sleep(0.01)
    after = sb.table("companies").update({"name": "New"}).eq("id", "acme").execute().data[0]["updated_at"]
    assert after > before


def test_rpc_calls_a_function(sb: Client, pg_db: PostgresDatabase) -> None:
    pg_db.execute("CREATE FUNCTION public.add_one(n integer) RETURNS integer LANGUAGE sql AS 'SELECT n + 1'")
    pg_db.execute("GRANT EXECUTE ON FUNCTION public.add_one(integer) TO service_role")
    assert sb.rpc("add_one", {"n": 41}).execute().data == 42
    with pytest.raises(APIError) as err:
        sb.rpc("no_such_function", {}).execute()
    assert err.value.code == "PGRST202"


@pytest.mark.parametrize(
    "call, code",
    [
        (lambda c: c.table("nope").select("*").execute(), "PGRST205"),
        (lambda c: c.table("companies").select("nope").execute(), "42703"),
        (lambda c: c.table("companies").insert({"id": "x", "nope": 1}).execute(), "PGRST204"),
        (lambda c: c.table("companies").insert({"id": "x"}).execute(), "23502"),
        (lambda c: c.table("companies").insert(company("x", imap_security="ssl")).execute(), "23514"),
        (lambda c: c.table("imap_checkpoints").insert(
            {"company_id": "ghost", "folder": "INBOX", "uidvalidity": 1, "last_uid": 1}).execute(), "23503"),
    ],
)
def test_errors_carry_postgrest_codes(sb: Client, call, code: str) -> None:
    with pytest.raises(APIError) as err:
        call(sb)
    assert err.value.code == code
    assert err.value.message


def test_status_codes(postgrest: PostgrestServer, sb: Client) -> None:
    sb.table("companies").insert(company("acme")).execute()
    headers = {"apikey": SUPABASE_SERVICE_KEY, "Authorization": f"Bearer {SUPABASE_SERVICE_KEY}"}
    with httpx.Client(base_url=postgrest.url + "/rest/v1", timeout=5) as http:
        assert http.get("/nope", headers=headers).status_code == 404
        assert http.post("/companies", json=company("acme"), headers=headers).status_code == 409
        assert http.post("/companies", json=company("b"), headers=headers).status_code == 201
        assert http.patch("/companies?id=eq.b", json={"name": "B2"}, headers=headers).status_code == 204
        assert http.delete("/companies?id=eq.b", headers=headers).status_code == 204
        unauth = http.get("/companies")
        assert unauth.status_code == 401 and unauth.json()["code"] == "PGRST301"
        wrong = http.get("/companies", headers={"apikey": "wrong", "Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        bad_json = http.post("/companies", content=b"{nope", headers=headers)
        assert bad_json.status_code == 400 and bad_json.json()["code"] == "PGRST102"
        anon = {"apikey": SUPABASE_ANON_KEY, "Authorization": f"Bearer {SUPABASE_ANON_KEY}"}
        denied = http.get("/companies", headers=anon)
        # 42501 as the anonymous role is 401 in PostgREST's table (403 once authenticated).
        assert denied.status_code == 401 and denied.json()["code"] == "42501"
        assert set(denied.json()) == {"code", "message", "details", "hint"}


def test_down_refuses_connections_then_comes_back(postgrest: PostgrestServer, sb: Client) -> None:
    port = postgrest.port
    postgrest.go_down()
    with pytest.raises(httpx.ConnectError):
        client(postgrest).table("companies").select("id").execute()
    postgrest.come_up()
    assert postgrest.port == port
    assert client(postgrest).table("companies").select("id").execute().data == []


def test_erroring_answers_503_and_500(postgrest: PostgrestServer, sb: Client) -> None:
    postgrest.fail_with(503)
    with pytest.raises(APIError) as err:
        sb.table("companies").select("id").execute()
    assert err.value.code == "PGRST001"
    postgrest.fail_with(500, "<html>upstream broke</html>", content_type="text/html")
    with pytest.raises(APIError) as err:
        sb.table("companies").select("id").execute()
    assert err.value.code == "500"
    postgrest.fail_with(None)
    assert sb.table("companies").select("id").execute().data == []


def test_keep_alive_requests_are_fast(sb: Client) -> None:
    sb.table("companies").select("id").execute()  # connect once
    start = time.monotonic()
    for _ in range(30):
        sb.table("companies").select("id").execute()
    # Without disable_nagle_algorithm each request costs ~40 ms; with it a few ms.
    assert time.monotonic() - start < 1.0
