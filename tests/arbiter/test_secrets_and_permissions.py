"""Secrets and private files under faults (issue 4): passwords and the Supabase key never show in
any place the product writes or exposes, and everything under state_dir is readable by its owner
only.

The real supervisor on a real Dovecot, with a good tenant, one with a wrong password and one whose
server is unreachable; the places searched are listed in README.md (Failure behaviour, Secrets).
"""
from __future__ import annotations

import os
import socket
import stat
import traceback
from pathlib import Path

import pytest

from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.imap import connect
from tenant_proc.signin.login import login
from tenant_proc.spec import ImapSettings, Secret, TenantSpec
from tests.arbiter.test_faults import make_tenants
from tests.harness.faultlib import write_spy
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message

integration = pytest.mark.integration


SECRETS = {"good": "Good-Secret-pw-3f9a1c", "bad": "Bad-Secret-pw-8e2d7b",
           "unreach": "Unreach-Secret-pw-5c4e0a", "supabase": "sb-service-role-SECRET-9d8c7b6a"}


@integration
def test_secrets_never_leak(dovecot, tmp_path):
    dovecot.add_user("good", SECRETS["good"])
    dovecot.add_user("bad", "the-real-password")
    dovecot.add_user("unreach", SECRETS["unreach"])
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    tenants = [TenantEntry("good", "good", SECRETS["good"]),
               TenantEntry("bad", "bad", SECRETS["bad"], host="127.0.0.3"),
               TenantEntry("unreach", "unreach", SECRETS["unreach"], port=closed_port, via_env=False)]
    spy_file = tmp_path / "ipc-frames.jsonl"
    spy_dir = write_spy(tmp_path / "spy")
    run = SupervisorRun(tmp_path / "run", dovecot, tenants, imap={"reconnect_backoff_max": 1})
    run.extra_env = {"SUPABASE_SERVICE_ROLE_KEY": SECRETS["supabase"], "IPC_SPY_FILE": str(spy_file),
                     "PYTHONPATH": f"{spy_dir}{os.pathsep}{Path(__file__).resolve().parents[2]}"}
    with run.start(wait_running=False):
        run.wait_for(lambda s: s["tenants"]["good"]["state"] == "idle"
                     and s["tenants"]["bad"]["state"] == "failed"
                     and s["tenants"]["unreach"]["reconnects"] >= 2, 20, "good idle, bad failed, unreach retrying")
        dovecot.deliver("good", make_message("secret test"))
        run.wait_emails(1)
        places: dict[str, bytes] = {
            "supervisor log": run.log_path.read_bytes(),
            "status.json": (run.state_dir / "status.json").read_bytes(),
            "status": run.cli("status").stdout.encode(),
            "status --json": run.cli("status", "--json").stdout.encode(),
            "jsonl": run.jsonl_path.read_bytes(),
            "checkpoints": (run.state_dir / "checkpoints.sqlite3").read_bytes(),
        }
        children = run.live_children()
        assert len(children) == 2  # good (idle) and unreach (reconnecting in-process)
        for child in children:
            places[f"cmdline {child.pid}"] = Path(f"/proc/{child.pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{child.pid}/environ").read_bytes()
            places[f"environ {child.pid}"] = environ
            assert b"PW_GOOD" not in environ  # setproctitle blanked it, not just our values
        assert spy_file.exists(), "the IPC spy recorded nothing"
        frames = spy_file.read_bytes()
        assert frames.count(b'"type":"heartbeat"') > 3 and b'"type":"fatal"' in frames
        places["ipc frames"] = frames
        assert "cannot connect" in run.tenant("unreach")["last_error"]
    places["supervisor log (after stop)"] = run.log_path.read_bytes()
    # exception text of the errors a wrong password or a dead server raise
    for exc in _connect_errors(dovecot, closed_port):
        places[f"exception {type(exc).__name__}"] = "".join(
            traceback.format_exception(exc)).encode() + repr(exc).encode()
    for where, data in places.items():
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} secret found in {where}"
    assert len(places) >= 12


def _connect_errors(dovecot, closed_port: int) -> list[BaseException]:
    errors: list[BaseException] = []
    wrong = TenantSpec(id="bad", name="Bad", host="127.0.0.3", port=dovecot.imaps_port, security="tls",
                       username="bad", password=Secret(SECRETS["bad"]), ca_file=str(dovecot.ca_file),
                       imap=ImapSettings(connect_timeout=5, command_timeout=5))
    client = connect.open_client(wrong)
    try:
        login(client, wrong)
    except FatalError as exc:
        errors.append(exc)
    finally:
        client.shutdown()
    dead = TenantSpec(id="u", name="U", host="127.0.0.1", port=closed_port, security="tls",
                      username="unreach", password=Secret(SECRETS["unreach"]),
                      imap=ImapSettings(connect_timeout=2, command_timeout=2))
    try:
        connect.open_client(dead)
    except ConnectionLost as exc:
        errors.append(exc)
    assert [type(e) for e in errors] == [FatalError, ConnectionLost]
    return errors


@integration
def test_state_dir_files_are_private(dovecot, tmp_path):
    tenants = make_tenants(dovecot, 2)
    with SupervisorRun(tmp_path, dovecot, tenants).start() as run:
        for t in tenants:
            dovecot.deliver(t.user, make_message("x"))
        run.wait_emails(2)
        names = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.state_dir.iterdir()}
        assert stat.S_IMODE(run.state_dir.stat().st_mode) == 0o700
        for name in ("status.json", "checkpoints.sqlite3", "checkpoints.sqlite3-wal",
                     "checkpoints.sqlite3-shm", "supervisor.pid"):
            assert names.get(name) == 0o600, (name, oct(names.get(name) or 0), names)
        assert all(mode & 0o077 == 0 for mode in names.values()), {n: oct(m) for n, m in names.items()}
        assert stat.S_IMODE(run.jsonl_path.stat().st_mode) == 0o600
