"""Derive, don't refuse: a config that only lowers heartbeat_timeout starts and handles mail
(the socket timeouts and heartbeat_interval it leaves unset follow it down)."""
from __future__ import annotations

import pytest

from tests.harness.supervisor_run import SupervisorRun, TenantEntry, _table
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration


def test_only_heartbeat_timeout_lowered_starts_and_handles_mail(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    run = SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")])
    # The user's whole [supervisor]/[imap] config: heartbeat_timeout = 5 and nothing else.
    # (SupervisorRun's own config sets fast test timeouts, which would hide the defaults.)
    tenant = run.config_path.read_text().split("[[tenant]]", 1)[1]
    run.config_path.write_text(
        _table("supervisor", {"state_dir": str(run.state_dir), "heartbeat_timeout": 5})
        + "\n" + _table("handler", {"target": "tenant_proc.handlers:jsonl", "path": str(run.jsonl_path)})
        + "\n[[tenant]]" + tenant)
    with run.start():
        dovecot.deliver("acme", make_message("heartbeat 5"))
        assert run.wait_emails(1)[0]["subject"] == "heartbeat 5"
        assert run.stop() == 0
    assert "must be" not in run.log_text()  # nothing refused or complained about
