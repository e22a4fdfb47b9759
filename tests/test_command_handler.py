"""The `command` handler with real processes (issue 12 item 11, and item 3's handler part): a
minimal environment plus the allow-list, its own process group killed whole, death with the
tenant process even by SIGKILL, and the tenant beating while a slow command runs."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from supervisor.config import load_config
from tenant_proc.handlers import DEFAULT_COMMAND_TIMEOUT, command
from tests.dovecot import make_message
from tests.supervisor_run import SupervisorRun, TenantEntry, process_gone_within
from tests.test_handlers import _context, _email

DUMP_ENV = "import json, os, sys; sys.stdin.buffer.read(); json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


def _wait_for_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_default_timeout_is_below_the_default_heartbeat_timeout(tmp_path):
    config = load_config(None, environ={"IDLE_SUPERVISOR_HANDLER_TARGET": "tenant_proc.handlers:command"})
    assert DEFAULT_COMMAND_TIMEOUT < config.supervisor.heartbeat_timeout


def test_group_is_killed_on_timeout(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    started = time.monotonic()
    with pytest.raises(Exception, match="timed out"):
        command(_email(), _context(tmp_path, argv=["sh", "-c", script], timeout=1))
    assert time.monotonic() - started < 10
    grandchild = int(_wait_for_file(pidfile, 5))
    assert process_gone_within([grandchild], 5) == []


def test_nul_in_the_message_id_does_not_fail_the_email(tmp_path):
    email = _email()
    email = type(email)(**{**email.__dict__, "message_id": "<x\x00y@t>"})
    out = tmp_path / "env.json"
    command(email, _context(tmp_path, argv=[sys.executable, "-c", DUMP_ENV, str(out)]))
    assert json.loads(out.read_text())["IDLE_MESSAGE_ID"] == "<xy@t>"


@pytest.mark.integration
def test_command_gets_a_minimal_environment_through_the_real_supervisor(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    out = tmp_path / "env.json"
    handler = {"target": "tenant_proc.handlers:command", "argv": [sys.executable, "-c", DUMP_ENV, str(out)],
               "env": ["MY_SETTING"]}
    extra = {"SUPABASE_SERVICE_ROLE_KEY": "service-key-secret", "MY_SETTING": "wanted",
             "OTHER_TENANT_PW": "other-secret", "LC_TIME": "C", "TZ": "UTC"}
    tenant = TenantEntry("acme", "acme", "acme-pw")
    with SupervisorRun(tmp_path, dovecot, [tenant], handler=handler, extra_env=extra).start() as run:
        dovecot.deliver("acme", make_message("for the program", message_id="<env@t>"))
        env = json.loads(_wait_for_file(out, 20))
        run.wait_for(lambda s: s["tenants"]["acme"]["processed"] == 1, 10, "processed")
    assert env["IDLE_TENANT_ID"] == "acme" and env["IDLE_MESSAGE_ID"] == "<env@t>"
    assert env["MY_SETTING"] == "wanted" and env["TZ"] == "UTC" and env["LC_TIME"] == "C"
    assert "PATH" in env
    for secret in ("service-key-secret", "other-secret", "acme-pw"):
        assert secret not in json.dumps(env)
    allowed = {"PATH", "HOME", "LANG", "TZ", "TMPDIR", "MY_SETTING"}
    assert {k for k in env if not k.startswith(("IDLE_", "LC_"))} <= allowed, sorted(env)


@pytest.mark.integration
def test_command_dies_with_its_tenant_even_by_sigkill(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    pidfile = tmp_path / "command.pid"
    handler = {"target": "tenant_proc.handlers:command", "timeout": 600,
               "argv": ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 300"]}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")], handler=handler).start() as run:
        dovecot.deliver("acme", make_message("slow program"))
        command_pid = int(_wait_for_file(pidfile, 20))
        tenant_pid = run.tenant("acme")["pid"]
        os.kill(tenant_pid, signal.SIGKILL)
        assert process_gone_within([command_pid], 5) == [], "the command outlived its tenant"


@pytest.mark.integration
def test_tenant_keeps_beating_while_a_slow_command_runs(dovecot, tmp_path):
    """A command running well past heartbeat_timeout (explicitly allowed) is slow work, not a
    hang: the tenant is not killed, and the email is handled once."""
    dovecot.add_user("acme", "acme-pw")
    out = tmp_path / "runs.txt"
    handler = {"target": "tenant_proc.handlers:command", "timeout": 30,
               "argv": ["sh", "-c", f"cat > /dev/null; echo run >> {out}; sleep 8"]}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")], handler=handler,
                       supervisor={"heartbeat_timeout": 4}, imap={"connect_timeout": 2, "command_timeout": 2}).start() as run:
        dovecot.deliver("acme", make_message("takes a while"))
        run.wait_for(lambda s: s["tenants"]["acme"]["processed"] == 1, 40, "processed")
        status = run.tenant("acme")
        assert status["restarts"] == 0, run.log_text()[-2000:]
        assert out.read_text().count("run") == 1
        assert "killed as hung" not in run.log_text()
