"""The tenant process against a real Dovecot: fork run_tenant, talk to it over the pipe, and see
mail handled (IDLE, polling, backfill, checkpoints, reconnects). How it ends: test_tenant_exits.py."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import ssl
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import pytest
from imapclient import IMAPClient

from ipc import protocol
from tenant_proc.main import run_tenant
from tenant_proc.spec import HandlerSpec, ImapSettings, Secret, StateSpec, TenantSpec
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message
from tests.servers.proxies.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

FORK = multiprocessing.get_context("fork")
WAIT = 10.0  # generous bound for anything that normally takes ~0.5 s (Dovecot's IDLE delay)


def make_spec(
    dc: Dovecot,
    tmp_path: Path,
    *,
    user: str = "alice",
    password: str | None = None,
    host: str | None = None,
    security: str = "tls",
    name: str = "Acme AB",
    target: str = "tenant_proc.handlers:jsonl",
    ca_file: str | None = None,
    options: dict[str, Any] | None = None,
    shutdown_timeout: float = 5.0,
    **imap: Any,
) -> TenantSpec:
    port = dc.imaps_port if security == "tls" else dc.imap_port
    settings = dict(retry_interval=0.2, connect_timeout=5, command_timeout=5)
    settings.update(imap)
    return TenantSpec(
        id=f"t-{user}",
        name=name,
        host=host or dc.host,
        port=port,
        security=security,  # type: ignore[arg-type]
        username=user,
        password=Secret(password if password is not None else dc.users[user]),
        ca_file=ca_file or str(dc.ca_file),
        imap=ImapSettings(**settings),
        handler=HandlerSpec(target=target, options=tuple(sorted((options or {"path": "emails.jsonl"}).items()))),
        state=StateSpec(state_dir=str(tmp_path / "state")),
        heartbeat_interval=0.2,
        shutdown_timeout=shutdown_timeout,
        base_dir=str(tmp_path),
    )


def _child_entry(spec: TenantSpec, child_conn: Connection, parent_conn: Connection, parent_pid: int,
                 shutdown_r: int, shutdown_w: int) -> None:
    parent_conn.close()  # as the supervisor does: else closing our end never reaches the child as EOF
    os.close(shutdown_w)  # as forking.close_all_fds_except does: only the parent holds it
    run_tenant(spec, child_conn, parent_pid, shutdown_r)


class Tenant:
    """One forked tenant process plus everything it sent us. It also gets the read end of a
    shutdown pipe, as the supervisor's children do (supervisor/forking.ShutdownPipe)."""

    def __init__(self, spec: TenantSpec) -> None:
        self.spec = spec
        self.conn, child_conn = FORK.Pipe()
        shutdown_r, self.shutdown_w = os.pipe()
        self.proc = FORK.Process(target=_child_entry, args=(spec, child_conn, self.conn, os.getpid(),
                                                            shutdown_r, self.shutdown_w))
        self.proc.start()
        child_conn.close()
        os.close(shutdown_r)
        self.messages: list[dict[str, Any]] = []

    def drain(self, timeout: float = 0.05) -> None:
        try:
            while self.conn.poll(timeout):
                message = protocol.receive(self.conn)
                if message is not None:
                    self.messages.append(message)
                timeout = 0
        except (EOFError, OSError):
            pass

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self.drain(0.05)
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
        raise AssertionError(f"no matching message within {timeout}s; last: {self.messages[-3:]}")

    def wait_state(self, state: str, timeout: float = WAIT) -> dict[str, Any]:
        return self.wait_for(lambda m: m["type"] == "heartbeat" and m["state"] == state, timeout)

    def processed(self) -> list[dict[str, Any]]:
        self.drain()
        return [m for m in self.messages if m["type"] == "processed"]

    def stop(self, timeout: float = WAIT) -> int | None:
        protocol.send(self.conn, protocol.stop())
        self.proc.join(timeout)
        self.drain()
        return self.proc.exitcode

    def close_shutdown_pipe(self) -> None:
        if self.shutdown_w >= 0:
            os.close(self.shutdown_w)
            self.shutdown_w = -1

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        self.close_shutdown_pipe()


@pytest.fixture
def tenants() -> Any:
    started: list[Tenant] = []

    def start(spec: TenantSpec) -> Tenant:
        tenant = Tenant(spec)
        started.append(tenant)
        return tenant

    yield start
    for tenant in started:
        tenant.close()


def jsonl_lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "emails.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_lines(tmp_path: Path, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = jsonl_lines(tmp_path)
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {count} jsonl lines, got {jsonl_lines(tmp_path)}")


def test_idle_delivery(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    tenant = tenants(make_spec(dovecot, tmp_path))
    assert tenant.wait_for(lambda m: m["type"] == "hello")["pid"] == tenant.proc.pid
    tenant.wait_state("idle")
    dovecot.deliver("alice", make_message("first", message_id="<first@example.com>"))
    lines = wait_lines(tmp_path, 1)
    assert lines[0]["subject"] == "first"
    assert lines[0]["message_id"] == "<first@example.com>"
    assert lines[0]["tenant_id"] == "t-alice"
    assert lines[0]["received_at"] <= lines[0]["handled_at"]
    event = tenant.wait_for(lambda m: m["type"] == "processed")
    assert event["status"] == "processed" and event["message_id"] == "<first@example.com>"
    assert 0 <= event["latency"] < 5
    heartbeat = tenant.wait_for(lambda m: m["type"] == "heartbeat" and m["counters"]["processed"] == 1)
    assert heartbeat["mode"] == "idle" and heartbeat["counters"]["logins"] == 1
    assert tenant.stop() == protocol.EXIT_OK


def test_backfill_none_skips_old_mail(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    dovecot.deliver("alice", make_message("old"))
    tenant = tenants(make_spec(dovecot, tmp_path, backfill="none"))
    tenant.wait_state("idle")
    dovecot.deliver("alice", make_message("new"))
    wait_lines(tmp_path, 1)
    time.sleep(0.3)  # give a wrongly processed old mail the chance to show up
    assert [line["subject"] for line in jsonl_lines(tmp_path)] == ["new"]


def test_backfill_all_processes_old_mail(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    for subject in ("old-1", "old-2"):
        dovecot.deliver("alice", make_message(subject))
    tenant = tenants(make_spec(dovecot, tmp_path, backfill="all"))
    lines = wait_lines(tmp_path, 2)
    assert [line["subject"] for line in lines] == ["old-1", "old-2"]
    tenant.wait_state("idle")


def test_processing_does_not_set_seen(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    dovecot.deliver("alice", make_message("unread"))
    tenants(make_spec(dovecot, tmp_path, backfill="all"))
    wait_lines(tmp_path, 1)
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    with IMAPClient(dovecot.host, dovecot.imaps_port, ssl_context=context, timeout=5) as client:
        client.login("alice", dovecot.users["alice"])
        client.select_folder("INBOX", readonly=True)
        flags = client.get_flags(client.search(["ALL"]))
    assert flags and all(b"\\Seen" not in f for f in flags.values())


def test_poll_mode_without_idle(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    tenant = tenants(make_spec(dovecot, tmp_path, host="127.0.0.2", poll_interval=1.0))
    beat = tenant.wait_state("polling")
    assert beat["mode"] == "poll"
    dovecot.deliver("alice", make_message("polled"))
    assert wait_lines(tmp_path, 1)[0]["subject"] == "polled"
    assert tenant.stop() == protocol.EXIT_OK


def test_starttls(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    tenant = tenants(make_spec(dovecot, tmp_path, security="starttls"))
    tenant.wait_state("idle")
    dovecot.deliver("alice", make_message("via starttls"))
    assert wait_lines(tmp_path, 1)[0]["subject"] == "via starttls"


def test_checkpoint_resume_processes_missed_mail_once(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    spec = make_spec(dovecot, tmp_path)
    first = tenants(spec)
    first.wait_state("idle")
    dovecot.deliver("alice", make_message("while up"))
    wait_lines(tmp_path, 1)
    assert first.stop() == protocol.EXIT_OK
    for n in range(3):
        dovecot.deliver("alice", make_message(f"while down {n}"))
    second = tenants(spec)
    lines = wait_lines(tmp_path, 4)
    second.wait_state("idle")
    time.sleep(0.3)
    lines = jsonl_lines(tmp_path)
    assert [line["subject"] for line in lines] == ["while up"] + [f"while down {n}" for n in range(3)]
    assert len({line["uid"] for line in lines}) == 4
    assert len(second.processed()) == 3


def test_poison_email_is_given_up_and_later_mail_processed(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    spec = make_spec(dovecot, tmp_path, target="tests.harness.tenant_handlers:poison", max_attempts=3, retry_interval=0.2)
    tenant = tenants(spec)
    tenant.wait_state("idle")
    dovecot.deliver("alice", make_message("POISON pill"))
    failed = tenant.wait_for(lambda m: m["type"] == "processed" and m["status"] == "failed")
    dovecot.deliver("alice", make_message("healthy"))
    assert wait_lines(tmp_path, 1)[0]["subject"] == "healthy"
    beat = tenant.wait_for(lambda m: m["type"] == "heartbeat" and m["counters"]["processed"] == 1)
    assert beat["counters"]["failed"] == 1
    assert "ValueError: boom" in beat["last_error"]
    import sqlite3

    db = sqlite3.connect(tmp_path / "state" / "checkpoints.sqlite3")
    row = db.execute("SELECT status, attempts, error FROM ledger WHERE uid = ?", (failed["uid"],)).fetchone()
    assert row == ("failed", 3, "ValueError: boom")


def test_server_kick_reconnects(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    tenant = tenants(make_spec(dovecot, tmp_path, reconnect_backoff_max=1.0))
    tenant.wait_state("idle")
    dovecot.kick("alice")
    tenant.wait_state("backoff")
    beat = tenant.wait_for(lambda m: m["type"] == "heartbeat" and m["state"] == "idle" and m["counters"]["logins"] == 2)
    assert beat["counters"]["reconnects"] == 1
    dovecot.deliver("alice", make_message("after kick"))
    assert wait_lines(tmp_path, 1)[0]["subject"] == "after kick"


def test_process_title_shows_company_and_state(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    name = "Företag Å Bolaget AB"
    tenant = tenants(make_spec(dovecot, tmp_path, name=name))
    tenant.wait_state("idle")
    pid = tenant.proc.pid
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert cmdline == f"{name} [idle] idle-supervisor"
    comm = Path(f"/proc/{pid}/comm").read_bytes().rstrip(b"\n")
    assert len(comm) <= 15 and comm.decode("utf-8") == "Företag Å Bol"


def test_idle_reissue_probe_and_reconcile_keep_one_session(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    spec = make_spec(dovecot, tmp_path, idle_timeout=0.4, dead_after=0.3, reconcile_interval=0.7)
    tenant = tenants(spec)
    tenant.wait_state("idle")
    time.sleep(2.0)  # several re-issues, liveness probes and reconciles
    dovecot.deliver("alice", make_message("still there"))
    assert wait_lines(tmp_path, 1)[0]["subject"] == "still there"
    beat = tenant.wait_for(lambda m: m["type"] == "heartbeat" and m["counters"]["processed"] == 1)
    assert beat["counters"]["reconnects"] == 0 and beat["counters"]["logins"] == 1
    assert beat["server_idle_age"] is not None and beat["server_idle_age"] < 1.0
    assert tenant.stop() == protocol.EXIT_OK


def test_oversized_message_is_handed_over_headers_only(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    tenant = tenants(make_spec(dovecot, tmp_path, max_message_bytes=2000))
    tenant.wait_state("idle")
    dovecot.deliver("alice", make_message("big", body="x" * 10_000))
    dovecot.deliver("alice", make_message("small"))
    lines = wait_lines(tmp_path, 2)
    assert [(l["subject"], l["truncated"]) for l in lines] == [("big", True), ("small", False)]
    assert lines[0]["size"] > 10_000



def test_first_fetch_follows_done_without_waiting_for_its_answer(
    dovecot: Dovecot, tmp_path: Path, tenants: Any
) -> None:
    """Reaction path: DONE and the size FETCH go out back to back (one round trip less).

    The proxy withholds the server's answer to the next DONE until the client sends more: a
    client that waited for that answer would hit command_timeout and reconnect instead.
    """
    with TcpProxy((dovecot.host, dovecot.imap_port)) as proxy:
        spec = dataclasses.replace(
            make_spec(dovecot, tmp_path, security="plain", command_timeout=5), port=proxy.port
        )
        tenant = tenants(spec)
        tenant.wait_state("idle")
        proxy.hold_done_answers(1)
        fetches_before = len(proxy.fetch_commands)
        dovecot.deliver("alice", make_message("pipelined"))
        assert wait_lines(tmp_path, 1, timeout=4)[0]["subject"] == "pipelined"
        assert proxy.holds_left == 0  # the DONE was held, and the FETCH released its answer
        # One round trip in all: the email came whole with the sizes, no body FETCH followed.
        sent = [line.split(b" ", 1)[1] for line in proxy.fetch_commands[fetches_before:]]
        assert sent == [b"UID FETCH 1:* (RFC822.SIZE)",
                        b"UID FETCH 1 (BODY.PEEK[]<0.65536> INTERNALDATE RFC822.SIZE)"], sent
        beat = tenant.wait_for(lambda m: m["type"] == "heartbeat" and m["state"] == "idle"
                               and m["counters"]["processed"] == 1)
        assert beat["counters"]["reconnects"] == 0
        assert tenant.stop() == protocol.EXIT_OK
