"""How a tenant process ends, forked against a real Dovecot: auth and config errors exit with
their codes, and every way of stopping it (stop message, SIGTERM, pipe EOF, the shutdown pipe)
logs out and is bounded by shutdown_timeout."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ipc import protocol
from tenant_proc.spec import TenantSpec
from tests.process.test_tenant_process import WAIT, make_spec, tenants  # noqa: F401 (fixture)
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration


def test_wrong_password_exits_auth(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    # Own address: Dovecot's auth penalty would slow the other tests' logins from 127.0.0.1.
    tenant = tenants(make_spec(dovecot, tmp_path, host="127.0.0.3", password="wrong"))
    fatal = tenant.wait_for(lambda m: m["type"] == "fatal", timeout=30)
    assert fatal["kind"] == "auth" and "wrong" not in fatal["reason"]
    tenant.proc.join(WAIT)
    assert tenant.proc.exitcode == protocol.EXIT_AUTH


def test_untrusted_certificate_exits_config(tmp_path: Path, tenants: Any) -> None:
    with Dovecot(tmp_path / "dc", users={"alice": "alice-pw"}, trusted_cert=False) as dc:
        tenant = tenants(make_spec(dc, tmp_path))
        fatal = tenant.wait_for(lambda m: m["type"] == "fatal")
        tenant.proc.join(WAIT)
    assert fatal["kind"] == "config"
    assert fatal["reason"].startswith(f"certificate verification failed for 127.0.0.1:{dc.imaps_port}")
    assert tenant.proc.exitcode == protocol.EXIT_CONFIG


def test_missing_folder_and_broken_handler_exit_config(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    spec = make_spec(dovecot, tmp_path)
    missing = tenants(TenantSpec(**{**spec.__dict__, "folder": "Nope"}))
    broken = tenants(make_spec(dovecot, tmp_path, target="tests.harness.tenant_handlers:Broken"))
    for tenant, words in ((missing, "'Nope' does not exist"), (broken, "RuntimeError: cannot start")):
        fatal = tenant.wait_for(lambda m: m["type"] == "fatal")
        assert fatal["kind"] == "config" and words in fatal["reason"]
        tenant.proc.join(WAIT)
        assert tenant.proc.exitcode == protocol.EXIT_CONFIG


def test_stop_logs_out_and_exits_zero(dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    tenant = tenants(make_spec(dovecot, tmp_path))
    tenant.wait_state("idle")
    assert dovecot.who() == ["alice"]
    started = time.monotonic()
    assert tenant.stop() == protocol.EXIT_OK
    assert time.monotonic() - started < 2
    assert dovecot.sessions_after(WAIT) == []
    log = dovecot.log_path.read_text()
    assert "Logged out" in log


@pytest.mark.parametrize("how", ["sigterm", "pipe-eof", "shutdown-pipe"])
def test_signal_and_pipe_eof_stop_cleanly(dovecot: Dovecot, tmp_path: Path, tenants: Any, how: str) -> None:
    tenant = tenants(make_spec(dovecot, tmp_path))
    tenant.wait_state("idle")
    if how == "sigterm":
        tenant.proc.terminate()
    elif how == "pipe-eof":
        tenant.conn.close()
    else:  # the supervisor's broadcast: nothing on the tenant's own pipe, no signal
        time.sleep(0.3)
        assert tenant.proc.is_alive()  # an open shutdown pipe is no stop
        tenant.close_shutdown_pipe()
    tenant.proc.join(WAIT)
    assert tenant.proc.exitcode == protocol.EXIT_OK
    assert dovecot.sessions_after(WAIT) == []  # logged out, not just gone


def test_stop_is_bounded_by_shutdown_timeout_even_in_a_hung_handler(
    dovecot: Dovecot, tmp_path: Path, tenants: Any
) -> None:
    spec = make_spec(
        dovecot, tmp_path, target="tenant_proc.handlers:command",
        options={"argv": ["sleep", "4"]}, shutdown_timeout=1.0,
    )
    tenant = tenants(spec)
    tenant.wait_state("idle")
    dovecot.deliver("alice", make_message("slow"))
    tenant.wait_state("processing")
    time.sleep(0.2)  # inside the handler now
    started = time.monotonic()
    tenant.proc.terminate()
    tenant.proc.join(WAIT)
    assert tenant.proc.exitcode == protocol.EXIT_OK
    assert time.monotonic() - started < 2.5
