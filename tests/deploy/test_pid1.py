"""As PID 1 (a container, e.g. Railway) the supervisor reaps orphans and still stops cleanly.

The supervisor runs in a new PID namespace (unshare) so it really is PID 1 there. A handler
command leaves a grandchild behind that the kernel re-parents to PID 1; without reaping it
would stay a zombie forever.
"""
from __future__ import annotations

import os
import shutil
import signal
import time

import psutil
import pytest

from tests.harness.supervisor_run import SupervisorRun, TenantEntry, process_gone_within
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration


def _can_unshare_pid() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


@pytest.mark.skipif(not _can_unshare_pid() and not os.environ.get("CI"),
                    reason="needs root and unshare(1) for a PID namespace")
def test_pid1_reaps_orphans_and_stops_on_sigterm(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    marker = tmp_path / "orphans"
    # The subshell exits at once; its background `sleep` is orphaned and re-parented to PID 1.
    handler = {"target": "tenant_proc.handlers:command",
               "argv": ["sh", "-c", f"(sleep 0.3; echo done >> {marker}) & exit 0"]}
    run = SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")], handler=handler,
                        command_prefix=["unshare", "--pid", "--fork", "--mount-proc"])
    with run.start():
        (supervisor,) = psutil.Process(run.proc.pid).children()  # unshare's child: PID 1 inside
        assert "supervisor" in " ".join(supervisor.cmdline())
        for i in range(3):
            dovecot.deliver("acme", make_message(f"orphan maker {i}"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(marker.read_text().splitlines() if marker.exists() else []) < 3:
            time.sleep(0.1)
        assert len(marker.read_text().splitlines()) == 3  # the orphans ran to their end
        time.sleep(1.0)  # a housekeeping pass or four
        zombies = [p for p in supervisor.children()
                   if p.status() == psutil.STATUS_ZOMBIE]
        assert zombies == [], [(p.pid, p.name()) for p in zombies]
        tenants = [p.pid for p in supervisor.children()]  # real pids of the tenant processes
        assert len(tenants) == 1
        supervisor.send_signal(signal.SIGTERM)
        assert run.proc.wait(15) == 0  # unshare passes on PID 1's exit code
        assert process_gone_within(tenants, 2) == []
    assert "stopped (exit code 0)" in run.log_text()
