"""A tenant process that dies of an exception nobody handled logs one line naming the
exception, its text and where it was raised: never a traceback (issue 12 "Done when")."""
from __future__ import annotations

import pytest

from tenant_proc.logs import describe_exception
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message


def test_describe_exception_is_one_line_with_type_text_and_where():
    try:
        raise SystemExit("handler called\nsys.exit")
    except SystemExit as exc:
        text = describe_exception(exc)
    assert text.startswith("SystemExit: handler called sys.exit at test_crash_line.py:")
    assert text.endswith(" in test_describe_exception_is_one_line_with_type_text_and_where")
    assert describe_exception(ValueError()) == "ValueError"  # no text, never raised: no "at"


@pytest.mark.allow_traceback("a deliberate tenant crash: its one 'crashed:' line is what is tested")
def test_a_crashing_tenant_logs_one_line_with_where_and_is_given_up_on(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    handler = {"target": "tests.harness.fault_handlers:exit_on_crash_subject", "path": str(tmp_path / "emails.jsonl")}
    supervisor = {"restart_backoff": 0.3, "restart_jitter": 0.0, "max_restarts": 10}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")], handler=handler,
                       supervisor=supervisor, imap={"max_attempts": 2}).start() as run:
        dovecot.deliver("acme", make_message("CRASH on this one"))
        dovecot.deliver("acme", make_message("after the crash"))
        run.wait_for(lambda s: s["tenants"]["acme"]["failed"] == 1
                     and s["tenants"]["acme"]["processed"] == 1, 30, "crashing email given up")
    log = run.log_text()
    crashes = [line for line in log.splitlines() if "crashed: " in line]
    assert crashes, log[-3000:]
    assert all("[acme] crashed: SystemExit: handler called sys.exit at fault_handlers.py:" in line
               and line.endswith(" in exit_on_crash_subject") for line in crashes), crashes
    assert "Traceback" not in log
