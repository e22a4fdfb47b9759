"""The control socket and a parent that stays up, tried against the real supervisor.

`status` is live (counters current to the last message, ages computed at read time), `reload`
and `stop` go through the socket, a stale socket after SIGKILL is handled, hostile control
clients cannot hold the loop, a child sending an oversized IPC frame is stopped alone, and a
failing loop tick is survived once and ends the run cleanly when it repeats.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import time

import pytest

from supervisor.service.control import MAX_REQUEST_BYTES
from tests.harness.supervisor_run import SupervisorRun, TenantEntry, process_gone_within
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration

# Quiet tenants beat rarely, so last_heartbeat_age must grow between two reads.
QUIET = {"idle_heartbeat_interval": 60}


def status_json(run: SupervisorRun) -> tuple[int, dict]:
    result = run.cli("status", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def ask(run: SupervisorRun, payload: bytes, timeout: float = 10) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(run.state_dir / "control.sock"))
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_status_right_after_an_email_is_live(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")],
                       supervisor=QUIET).start() as run:
        sock_path = run.state_dir / "control.sock"
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        dovecot.deliver("acme", make_message("counted at once"))
        run.wait_emails(1)
        code, first = status_json(run)
        assert code == 0 and first["supervisor"]["source"] == "live"
        assert first["supervisor"]["running"] is True
        assert first["tenants"]["acme"]["processed"] == 1
        time.sleep(0.5)
        code, second = status_json(run)
        assert code == 0 and second["tenants"]["acme"]["processed"] == 1
        assert second["tenants"]["acme"]["last_heartbeat_age"] > first["tenants"]["acme"]["last_heartbeat_age"]
        # Every status.json field is there, with the same values where nothing changed.
        on_file = run.status()
        assert set(on_file["supervisor"]) <= set(second["supervisor"])
        assert set(on_file["tenants"]["acme"]) <= set(second["tenants"]["acme"])
        table = run.cli("status")
        assert table.returncode == 0 and "running" in table.stdout.splitlines()[0]


def test_reload_and_stop_go_through_the_socket(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")]).start() as run:
        pid = run.child_pids()["acme"]
        reload_ = run.cli("reload")
        assert reload_.returncode == 0 and "control socket" in reload_.stdout, reload_.stderr
        deadline = time.monotonic() + 15
        while "SIGHUP: reloading" not in run.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "control socket: reload requested" in run.log_text()
        assert "SIGHUP: reloading" in run.log_text()
        assert run.child_pids()["acme"] == pid  # unchanged tenant: same process
        stop = run.cli("stop", "--wait", "15")
        assert stop.returncode == 0 and "control socket" in stop.stdout, stop.stderr
        assert run.proc.wait(5) == 0
        assert process_gone_within([pid], 2) == []
        assert not (run.state_dir / "control.sock").exists()
    code, last = status_json(run)
    assert code == 3 and last["supervisor"]["source"] == "file"


def test_stale_socket_after_sigkill_falls_back_then_is_replaced(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    run = SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")])
    with run.start():
        run.kill_tree()  # SIGKILL: the socket file stays behind
        assert (run.state_dir / "control.sock").exists()
        code, last = status_json(run)
        assert code == 3 and last["supervisor"]["running"] is False
        assert last["supervisor"]["source"] == "file"
        again = run.cli("reload")
        assert again.returncode == 2 and "no supervisor is running" in again.stderr
    second = SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")])
    with second.start(wait_running=False):
        second.wait_for(lambda s: s["supervisor"]["pid"] == second.proc.pid
                        and s["tenants"]["acme"]["state"] == "idle", 20, "the new supervisor up")
        code, live = status_json(second)
        assert code == 0 and live["supervisor"]["source"] == "live"
        assert live["supervisor"]["pid"] == second.proc.pid


def test_hostile_control_clients_cannot_hold_the_loop(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")]).start() as run:
        path = str(run.state_dir / "control.sock")
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.connect(path)
        stalled.sendall(b'{"command": "sta')  # and never more
        flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        flood.connect(path)
        flood.sendall(b"x" * (MAX_REQUEST_BYTES + 10))
        flood.settimeout(10)
        assert b"larger than" in flood.recv(4096)
        flood.close()
        # The loop still answers, and still does its work, while the stalled client waits.
        code, live = status_json(run)
        assert code == 0 and live["supervisor"]["source"] == "live"
        dovecot.deliver("acme", make_message("while stalled"))
        run.wait_emails(1)
        assert json.loads(ask(run, b'{"command": "nope"}\n'))["error"].startswith("unknown command")
        assert json.loads(ask(run, b"not json\n")) == {"ok": False, "error": "request is not JSON"}
        # The stalled client is closed at its deadline (the supervisor never waits for it).
        stalled.settimeout(15)
        assert stalled.recv(4096) == b""
        stalled.close()
        assert run.proc.poll() is None


def test_a_child_sending_an_oversized_frame_is_stopped_alone(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    dovecot.add_user("globex", "globex-pw")
    handler = {"target": "tests.harness.fault_handlers:oversized_frame", "path": str(tmp_path / "emails.jsonl")}
    tenants = [TenantEntry("acme", "acme", "acme-pw"), TenantEntry("globex", "globex", "globex-pw")]
    with SupervisorRun(tmp_path, dovecot, tenants, handler=handler).start() as run:
        pids = run.child_pids()
        dovecot.deliver("acme", make_message("OVERSIZED frame follows"))
        run.wait_emails(1, tenant="acme")
        run.wait_for(lambda s: s["tenants"]["acme"].get("pid") not in (None, pids["acme"])
                     and s["tenants"]["acme"]["state"] == "idle", 30, "acme restarted")
        assert "acme] sent an IPC frame above 65536 bytes: stopping it" in run.log_text()
        dovecot.deliver("globex", make_message("still handled"))
        run.wait_emails(1, tenant="globex")
        assert run.child_pids()["globex"] == pids["globex"]  # untouched
        assert run.proc.poll() is None
        code, live = status_json(run)
        assert code == 0 and live["supervisor"]["source"] == "live"
    assert "Traceback" not in run.log_text()


def _faulty_run(tmp_path, dovecot) -> SupervisorRun:
    dovecot.add_user("acme", "acme-pw")
    trigger = tmp_path / "fail_ticks"
    return SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")],
                         entry_module="tests.harness.faulty_supervisor",
                         extra_env={"IDLE_TEST_FAIL_TICKS": str(trigger)})


@pytest.mark.allow_traceback("injected failing ticks: their one-line reports are what is tested")
def test_one_failing_tick_is_contained(dovecot, tmp_path):
    with _faulty_run(tmp_path, dovecot).start() as run:
        pid = run.child_pids()["acme"]
        (tmp_path / "fail_ticks").write_text("1")
        deadline = time.monotonic() + 15
        while "loop tick failed" not in run.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = [line for line in run.log_text().splitlines() if "loop tick failed" in line]
        assert len(lines) == 1, run.log_text()[-2000:]
        assert "RuntimeError: injected tick failure (0 left) at faulty_supervisor.py:" in lines[0]
        dovecot.deliver("acme", make_message("after the failure"))
        run.wait_emails(1)
        assert run.proc.poll() is None and run.child_pids()["acme"] == pid
        assert run.stop() == 0
    assert "Traceback" not in run.log_text()


@pytest.mark.allow_traceback("injected failing ticks: their one-line reports are what is tested")
def test_repeated_failing_ticks_end_the_run_cleanly(dovecot, tmp_path):
    with _faulty_run(tmp_path, dovecot).start() as run:
        pid = run.child_pids()["acme"]
        (tmp_path / "fail_ticks").write_text("1000")
        assert run.proc.wait(60) == 1
        log = run.log_text()
        assert "failed loop ticks within" in log and "stopping every tenant" in log
        assert "[acme] stopped (exit code 0)" in log  # a graceful stop, not the last SIGKILL
        assert process_gone_within([pid], 2) == []
    assert "Traceback" not in run.log_text()
    assert os.path.exists(run.state_dir / "status.json")
    assert not (run.state_dir / "control.sock").exists()
