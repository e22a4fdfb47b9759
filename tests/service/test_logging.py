"""Log output as operators meet it: one line per event with the company name, JSON for
Railway, no timestamp under journald (it adds its own), children on the same stream."""
from __future__ import annotations

import json
import os
import re

import pytest

from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration


def run_one(tmp_path, dovecot, **env) -> str:
    dovecot.add_user("acme", "acme-pw")
    run = SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw", name="Acme AB")],
                        extra_env=env)
    if "JOURNAL_STREAM" in env:
        run.log_path.touch()
        st = os.stat(run.log_path)
        run.extra_env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    with run.start():
        dovecot.deliver("acme", make_message("logged"))
        run.wait_emails(1)
    return run.log_text()


def test_json_log_lines(tmp_path, dovecot):
    text = run_one(tmp_path, dovecot, IDLE_SUPERVISOR_LOG_FORMAT="json")
    entries = [json.loads(line) for line in text.splitlines()]
    assert all({"ts", "level", "logger", "pid", "msg"} <= set(e) for e in entries)
    pids = {e["pid"] for e in entries}
    assert len(pids) >= 2, "the tenant process logs to the same stream"
    assert any(e["msg"] == "[Acme AB] IDLE active" for e in entries)
    assert any(e["msg"].startswith("[Acme AB] processed uid") for e in entries)


def test_no_timestamp_under_journald(tmp_path, dovecot):
    text = run_one(tmp_path, dovecot, JOURNAL_STREAM="set-below")
    lines = text.splitlines()
    assert lines and all(re.match(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line) for line in lines), lines[:3]
    assert "INFO [Acme AB] IDLE active" in lines


def test_plain_text_lines_carry_utc_timestamp_and_company(tmp_path, dovecot):
    text = run_one(tmp_path, dovecot)
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO \[Acme AB\] IDLE active$", text, re.M)


def test_loggers_keep_the_names_operators_filter_on():
    """Issue 20 moved every module into a folder; the loggers' names stayed (README: Layout)."""
    import importlib

    expected = {"supervisor.service.sdnotify": "supervisor.sdnotify",
                "supervisor.service.control": "supervisor.control",
                "supervisor.service.metrics": "supervisor.metrics",
                "supervisor.tenants.cluster": "supervisor.cluster",
                "supervisor.arbiter.arbiter": "supervisor",
                "tenant_proc.message.parse": "tenant_proc.message",
                "tenant_proc.store.supabase": "tenant_proc.store_supabase",
                "tenant_proc.signin.tokens": "tenant_proc.signin",
                "ipc.protocol": "ipc"}
    names = {module: importlib.import_module(module).log.name for module in expected}
    assert names == expected
