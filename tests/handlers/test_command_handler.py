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

from supervisor.config.load import load_config
from tenant_proc.handlers import command
from tenant_proc.handlers.command_runner import DEFAULT_COMMAND_TIMEOUT
from tests.handlers.test_handlers import _context, _email
from tests.harness.supervisor_run import SupervisorRun, TenantEntry, process_gone_within
from tests.servers.imap.mail_helpers import make_message

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


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":  # fields: state, ppid, pgrp, ...
            members.append(int(entry))
    return members


@pytest.mark.integration
def test_the_whole_command_group_dies_with_a_sigkilled_tenant(dovecot, tmp_path):
    """The kernel kills the program with its tenant (parent-death signal); the supervisor kills
    the rest of its process group (here a background `sleep`), and the restarted tenant hands
    the email over once more (the ledger's `handling` mark), which then succeeds once."""
    dovecot.add_user("acme", "acme-pw")
    mark, done = tmp_path / "first-run", tmp_path / "done.txt"
    leader_file, grandchild_file = tmp_path / "leader.pid", tmp_path / "grandchild.pid"
    script = (f"if [ -e {mark} ]; then echo \"$IDLE_UID $IDLE_REDELIVERED\" >> {done}; exit 0; fi; "
              f"touch {mark}; sleep 300 & echo $! > {grandchild_file}; echo $$ > {leader_file}; wait")
    handler = {"target": "tenant_proc.handlers:command", "timeout": 600, "argv": ["sh", "-c", script]}
    run = SupervisorRun(tmp_path / "run", dovecot, [TenantEntry("acme", "acme", "acme-pw")], handler=handler)
    grandchild = None
    try:
        with run.start():
            dovecot.deliver("acme", make_message("slow program", message_id="<group@t>"))
            grandchild = int(_wait_for_file(grandchild_file, 20))
            leader = int(_wait_for_file(leader_file, 5))
            assert leader in _group_members(leader) and grandchild in _group_members(leader)
            tenant_pid = run.tenant("acme")["pid"]
            os.kill(tenant_pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _group_members(leader) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _group_members(leader) == [], "part of the command's group outlived its tenant"
            run.wait_for(lambda s: s["tenants"]["acme"]["pid"] not in (None, tenant_pid)
                         and s["tenants"]["acme"]["processed"] >= 1, 30, "restarted and handled")
            time.sleep(1)  # a second hand-over would show up now
            assert done.read_text().split("\n")[:-1] == ["1 1"]  # once, marked redelivered
            assert "killed process group" in run.log_text()
    finally:
        if grandchild is not None and process_gone_within([grandchild], 0.1):
            os.kill(grandchild, signal.SIGKILL)  # a failure leaves it running: do not leak it


def test_a_reported_group_is_killed_only_while_its_number_is_still_ours():
    import subprocess

    from ipc.procstat import start_ticks
    from supervisor.children.command_groups import kill_orphaned_group, reported_group

    assert reported_group({"pgid": os.getpgrp(), "start": 1}) is None  # never our own group
    assert reported_group({"pgid": 1, "start": 1}) is None and reported_group({"pgid": True}) is None
    assert reported_group({"pgid": None, "start": None}) is None  # the command ended
    proc = subprocess.Popen(["sleep", "300"], process_group=0)
    try:
        start = start_ticks(proc.pid)
        assert start is not None and reported_group({"pgid": proc.pid, "start": start}) == (proc.pid, start)
        # Another start time under that number: the pid was reused, our group is long empty.
        assert not kill_orphaned_group("t", (proc.pid, start + 1))
        assert proc.poll() is None
        assert kill_orphaned_group("t", (proc.pid, start))
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.integration
def test_the_command_group_dies_when_the_supervisor_is_sigkilled(dovecot, tmp_path):
    """No supervisor left to clean up: the tenant (told by its parent-death signal) stops, and
    when its shutdown_timeout runs out while the command still runs, it kills the command's
    whole group before it exits."""
    dovecot.add_user("acme", "acme-pw")
    leader_file, grandchild_file = tmp_path / "leader.pid", tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {grandchild_file}; echo $$ > {leader_file}; wait"
    handler = {"target": "tenant_proc.handlers:command", "timeout": 600, "argv": ["sh", "-c", script]}
    run = SupervisorRun(tmp_path / "run", dovecot, [TenantEntry("acme", "acme", "acme-pw")], handler=handler,
                        supervisor={"shutdown_timeout": 2})
    grandchild = None
    try:
        with run.start():
            dovecot.deliver("acme", make_message("slow program", message_id="<orphan@t>"))
            grandchild = int(_wait_for_file(grandchild_file, 20))
            leader = int(_wait_for_file(leader_file, 5))
            tenant_pid = run.tenant("acme")["pid"]
            assert run.proc is not None
            run.proc.kill()
            run.proc.wait(5)
            assert process_gone_within([tenant_pid], 15) == [], "the tenant outlived its supervisor"
            deadline = time.monotonic() + 10
            while _group_members(leader) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _group_members(leader) == [], "part of the command's group outlived its tenant"
    finally:
        if grandchild is not None and process_gone_within([grandchild], 0.1):
            os.kill(grandchild, signal.SIGKILL)  # a failure leaves it running: do not leak it
