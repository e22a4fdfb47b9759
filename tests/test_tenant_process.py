"""The tenant process against a real Dovecot: fork run_tenant, talk to it over the pipe."""
from __future__ import annotations

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
from tests.dovecot import Dovecot, make_message

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
        handler=HandlerSpec(target=target, options=(("path", "emails.jsonl"),)),
        state=StateSpec(state_dir=str(tmp_path / "state")),
        heartbeat_interval=0.2,
        shutdown_timeout=5.0,
        base_dir=str(tmp_path),
    )


class Tenant:
    """One forked tenant process plus everything it sent us."""

    def __init__(self, spec: TenantSpec) -> None:
        self.spec = spec
        self.conn, child_conn = FORK.Pipe()
        self.proc = FORK.Process(target=run_tenant, args=(spec, child_conn, os.getpid()))
        self.proc.start()
        child_conn.close()
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

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


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
