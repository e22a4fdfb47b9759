"""Issue 12 item 3: a slow Supabase never gets a healthy tenant killed as hung.

Every state-store request is bounded as a whole (tenant_proc/http_clients/deadline.py) by a timeout
derived from heartbeat_timeout (supervisor/config/timeouts.py), and the store beats before each
request. A request that runs out of time is the failure of that step: the email stays
unhandled, the tenant reconnects, and once Supabase answers again the email is handled once.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Iterator

import httpx
import pytest

from supervisor.config.settings import SupervisorSettings
from supervisor.config.timeouts import store_request_timeout
from tenant_proc.handlers.loader import load_handler
from tenant_proc.http_clients.deadline import DeadlineClient
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message
from tests.servers.postgres.pg import PostgresDatabase
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY, PostgrestServer
from tests.servers.proxies.slow_proxy import SlowProxy
from tests.store.test_supabase import add_company


def test_the_request_timeout_follows_heartbeat_timeout_down():
    assert store_request_timeout(SupervisorSettings()) == 10.0  # as before the derivation
    lowered = store_request_timeout(SupervisorSettings(heartbeat_timeout=8, heartbeat_interval=0.5))
    assert lowered == pytest.approx(3.75)
    # A beat before each request: the longest silence is one interval plus one request.
    assert 0.5 + lowered < 8 / 2 + 0.5


def test_the_derived_timeout_reaches_every_tenant_spec(tmp_path):
    from supervisor.config.load import load_config
    from supervisor.tenants.rows import build_tenant_specs

    config_path = tmp_path / "config.toml"
    config_path.write_text(f'''
[supervisor]
state_dir = "{tmp_path}"
heartbeat_timeout = 8
heartbeat_interval = 0.5
[state]
backend = "supabase"
[[tenant]]
id = "acme"
host = "127.0.0.1"
port = 993
username = "acme"
password = "pw"
''')
    config = load_config(config_path, {"SUPABASE_URL": "http://127.0.0.1:9",
                                       "SUPABASE_SERVICE_ROLE_KEY": "k"})
    specs = build_tenant_specs(config, config.raw_tenants, {}).specs
    assert specs["acme"].state.request_timeout == pytest.approx(3.75)
    # Handlers get the same bound (supabase_insert uses it for its one request per email).
    loaded = load_handler(specs["acme"], logging.getLogger("test"))
    assert loaded.context.request_timeout == pytest.approx(3.75)


@contextlib.contextmanager
def trickle_forever() -> Iterator[str]:
    """An HTTP server (its URL) answering every request one byte every 0.3 s: each read is
    quick, the whole answer is not."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            with conn:
                conn.recv(65536)
                try:
                    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                        conn.sendall(bytes([byte]))
                        if stop.wait(0.3):
                            break
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.fixture
def trickling_server() -> Iterator[str]:
    with trickle_forever() as url:
        yield url


def test_a_request_is_bounded_as_a_whole_not_per_read(trickling_server):
    """httpx's own timeouts would let this request run ~12 s (every read is well under 1 s)."""
    with DeadlineClient(1.5) as client:
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            client.get(trickling_server)
        assert time.monotonic() - started < 5  # 1.5 s budget; generous for a loaded machine


def test_requests_within_the_deadline_work_and_reuse_the_connection(postgrest: PostgrestServer,
                                                                     pg_db: PostgresDatabase):
    add_company(pg_db, "acme")
    with DeadlineClient(5.0) as client:
        headers = {"apikey": TEST_SERVICE_KEY, "Authorization": f"Bearer {TEST_SERVICE_KEY}"}
        for _ in range(3):  # the deadline of one request never leaks into the next
            answer = client.get(f"{postgrest.url}/rest/v1/companies?select=id", headers=headers)
            assert answer.status_code == 200 and answer.json() == [{"id": "acme"}]
            time.sleep(0.2)


@pytest.mark.integration
def test_slow_supabase_writes_do_not_get_a_tenant_killed(dovecot, pg_db: PostgresDatabase,
                                                         postgrest: PostgrestServer, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    add_company(pg_db, "acme")
    heartbeat_timeout = 8
    with SlowProxy(("127.0.0.1", postgrest.port)) as proxy:
        run = SupervisorRun(
            tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")],
            supervisor={"heartbeat_timeout": heartbeat_timeout},
            imap={"retry_interval": 1, "reconnect_backoff_max": 2},
            extra_sections={"state": {"backend": "supabase"}},
            extra_env={"SUPABASE_URL": proxy.url, "SUPABASE_SERVICE_ROLE_KEY": TEST_SERVICE_KEY})
        with run.start():
            pid = run.child_pids()["acme"]
            # Every answer now comes later than heartbeat_timeout: each request gives up first.
            proxy.response_delay = heartbeat_timeout + 4
            dovecot.deliver("acme", make_message("written while Supabase crawls"))
            run.wait_for(lambda s: "timed out" in (s["tenants"]["acme"].get("last_error") or ""),
                         30, "a store request timing out")
            time.sleep(3 * heartbeat_timeout)  # long enough for any "hung" kill to happen
            assert run.emails() == []  # nothing handed over while its mark could not be written
            status = run.status()["tenants"]["acme"]
            assert status["restarts"] == 0 and run.child_pids()["acme"] == pid, status
            assert "killed as hung" not in run.log_text()
            proxy.response_delay = 0
            run.wait_emails(1, timeout=40)
            time.sleep(3)
            assert [e["subject"] for e in run.emails()] == ["written while Supabase crawls"]
            rows = pg_db.execute("SELECT status FROM processed_emails")
            assert rows == [("processed",)]
            assert run.tenant("acme")["restarts"] == 0 and run.child_pids()["acme"] == pid
            assert run.stop() == 0
    assert "Traceback" not in run.log_text()
