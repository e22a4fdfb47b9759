"""state_dir in a place another local account could reach, tried with the real supervisor: an
existing wide state_dir is made 0700, one owned by another user is refused with one line, and a
link planted where the pid file belongs is refused, its target untouched.

Before: an existing state_dir kept its mode, and the pid file was opened through a link and
truncated the link's target (tenant_proc/private_files.py says why each rule holds).
"""
from __future__ import annotations

import os
import stat

import pytest

from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message


def refused_run(run: SupervisorRun, expected: str) -> str:
    result = run.cli("run", timeout=30)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    return lines[0]


@pytest.mark.integration
def test_an_existing_wide_state_dir_is_made_0700(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    run = SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")])
    run.state_dir.mkdir()
    os.chmod(run.state_dir, 0o755)
    with run.start():
        assert stat.S_IMODE(run.state_dir.stat().st_mode) == 0o700
        assert f"state_dir {run.state_dir} was 755: made it 0700" in run.log_text()
        dovecot.deliver("acme", make_message("private"))
        run.wait_emails(1)


def test_a_link_at_the_pid_file_is_refused_and_its_target_untouched(dovecot, tmp_path):
    run = SupervisorRun(tmp_path, dovecot, [])
    run.state_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (run.state_dir / "supervisor.pid").symlink_to(victim)
    line = refused_run(run, "supervisor.pid is a symbolic link: refusing to follow it")
    assert victim.read_text() == "precious\n", line
    # The CLI's readers do not follow links either: no supervisor is named through the pid
    # file's, and a status.json link is not read as the supervisor's status.
    forged = tmp_path / "forged.json"
    forged.write_text('{"supervisor": {"pid": 1, "started_at": 0, "tenants": 0}, "tenants": {}}')
    (run.state_dir / "status.json").symlink_to(forged)
    status = run.cli("status", "--json")
    assert status.returncode == 1 and status.stdout == "", status.stdout
    assert "cannot read" in status.stderr and "Traceback" not in status.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_state_dir_of_another_user_is_refused_with_one_line(dovecot, tmp_path):
    run = SupervisorRun(tmp_path, dovecot, [])
    run.state_dir.mkdir(mode=0o777)
    os.chmod(run.state_dir, 0o777)  # a shared directory, as /tmp is
    os.chown(run.state_dir, 65534, 65534)
    refused_run(run, f"state_dir {run.state_dir} belongs to uid 65534, not to uid 0")
    assert list(run.state_dir.iterdir()) == []  # nothing created in it
