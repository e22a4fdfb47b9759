"""The CLI contract from outside: check, stop, run errors, no tracebacks, no secrets."""
from __future__ import annotations

import time

import pytest

from tests.harness.supervisor_run import SupervisorRun, TenantEntry, process_gone_within

pytestmark = pytest.mark.integration


def test_check_reports_each_tenant_and_fails_if_any_failed(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    dovecot.add_user("locked", "right-pw")
    tenants = [TenantEntry("acme", "acme", "acme-pw", name="Acme AB"),
               TenantEntry("polled", "acme", "acme-pw", host="127.0.0.2"),
               TenantEntry("locked", "locked", "Secret-Wrong-99", host="127.0.0.3"),
               TenantEntry("untrusted", "acme", "acme-pw", ca_file=None),
               TenantEntry("nofolder", "acme", "acme-pw", folder="Nope")]
    run = SupervisorRun(tmp_path, dovecot, tenants)
    result = run.cli("check", timeout=60)
    lines = {line.split(" ", 1)[0]: line for line in result.stdout.splitlines()}
    assert result.returncode == 1
    assert "OK TLS, IDLE, UIDVALIDITY" in lines["acme"] and "UIDNEXT 1" in lines["acme"]
    assert "no IDLE (will poll)" in lines["polled"]
    assert "FAIL login failed" in lines["locked"]
    assert "FAIL certificate verification failed" in lines["untrusted"]
    assert "FAIL" in lines["nofolder"] and "Nope" in lines["nofolder"]
    assert "Secret-Wrong-99" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr

    only = run.cli("check", "acme", timeout=30)
    assert only.returncode == 0 and only.stdout.startswith("acme (Acme AB): OK")
    unknown = run.cli("check", "ghost", timeout=30)
    assert unknown.returncode == 1 and "ghost: FAIL unknown tenant id" in unknown.stdout


def test_stop_command_stops_the_running_supervisor(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")]).start() as run:
        pid = run.child_pids()["acme"]
        result = run.cli("stop", "--wait", "15")
        assert result.returncode == 0, result.stderr
        assert run.proc.wait(5) == 0
        assert process_gone_within([pid], 2) == []
    again = run.cli("stop")
    assert again.returncode == 2 and "no supervisor is running" in again.stderr


def test_a_second_supervisor_on_the_same_state_dir_is_refused(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")]).start() as run:
        second = run.cli("run", timeout=20)
        assert second.returncode == 2
        assert "another supervisor" in second.stderr and "Traceback" not in second.stderr
        time.sleep(0.2)
        assert run.proc.poll() is None


@pytest.mark.parametrize("config, message", [
    ("[supervisor\n", "not valid TOML"),
    ("[supervisor]\nheartbeat_interval = 0\n", "heartbeat_interval must be above 0"),
])
def test_run_with_a_bad_config_is_one_line(tmp_path, config, message):
    import subprocess
    import sys

    from tests.harness.supervisor_run import REPO_ROOT

    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = subprocess.run([sys.executable, "-m", "supervisor", "run", "--config", str(path)],
                            capture_output=True, text=True, timeout=20, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
