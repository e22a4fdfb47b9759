"""A tenant stalled half-way through an IPC frame holds nothing but itself (issue 12 item 13).

The supervisor reads its children's pipes without blocking (ipc/framing.py): the partial frame is
buffered, every other tenant stays supervised (its mail counted in a live `status`), and the
stalled one, sending no more heartbeats, is killed as hung and restarted; its email is then
handled once.
"""
from __future__ import annotations

import json
import time

import pytest

from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration


def live_status(run: SupervisorRun) -> dict:
    result = run.cli("status", "--json", timeout=30)
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("partial", ["header", "header+half"])
def test_a_child_stalled_mid_frame_is_killed_as_hung_while_the_others_run(dovecot, tmp_path, partial):
    dovecot.add_user("acme", "acme-pw")
    dovecot.add_user("globex", "globex-pw")
    handler = {"target": "tests.harness.ipc_handlers:partial_frame_then_stall",
               "path": str(tmp_path / "emails.jsonl"), "marker_dir": str(tmp_path / "markers"), "partial": partial}
    tenants = [TenantEntry("acme", "acme", "acme-pw"), TenantEntry("globex", "globex", "globex-pw")]
    with SupervisorRun(tmp_path, dovecot, tenants, handler=handler,
                       supervisor={"heartbeat_timeout": 8}).start() as run:
        pids = run.child_pids()
        dovecot.deliver("acme", make_message("PARTIAL frame, then SIGSTOP"))
        deadline = time.monotonic() + 20
        while not (tmp_path / "markers" / "acme-1").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "markers" / "acme-1").exists(), run.log_text()[-2000:]
        # acme is now stopped mid-frame. The loop goes on: globex's mail is read off its pipe
        # (counted in a live status, which only the loop answers).
        dovecot.deliver("globex", make_message("handled meanwhile"))
        run.wait_emails(1, tenant="globex")
        deadline = time.monotonic() + 15
        while True:
            status = live_status(run)
            if status["tenants"]["globex"]["processed"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status["supervisor"]["source"] == "live", status
        assert status["tenants"]["globex"]["processed"] == 1
        assert run.child_pids()["acme"] == pids["acme"]  # not restarted yet: still stalled
        # No heartbeat from acme: killed as hung, restarted, and its email handled once.
        run.wait_for(lambda s: s["tenants"]["acme"].get("pid") not in (None, pids["acme"])
                     and s["tenants"]["acme"]["state"] == "idle", 40, "acme restarted")
        assert "[acme] no heartbeat for 8s: killed as hung" in run.log_text()
        acme = run.wait_emails(1, tenant="acme", timeout=30)
        assert [e["subject"] for e in acme] == ["PARTIAL frame, then SIGSTOP"]
        assert run.child_pids()["globex"] == pids["globex"]  # untouched throughout
        status = live_status(run)
        assert status["tenants"]["acme"]["restarts"] >= 1
        assert status["tenants"]["globex"]["restarts"] == 0
        assert run.proc.poll() is None
        assert run.stop() == 0
    assert "Traceback" not in run.log_text()
    assert len(run.emails()) == 2
