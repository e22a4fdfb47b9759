"""Issue 22 item 1 through the real supervisor: a header that once made the parser raise
(`\\xff+2AA-=?utf-7?b?x?=`: 8-bit bytes beside a UTF-7 encoded word that decodes to a lone
surrogate, in Subject and Message-ID) reaches the handler at once, with replacement characters,
on its first attempt; the email after it is not held up. Before: every attempt failed the same
way, the mailbox waited max_attempts x retry_interval and the email ended `failed`."""
from __future__ import annotations

import sqlite3
import time

import pytest

from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration

HOSTILE = (b"From: stranger@example.net\r\nTo: support@acme.example\r\n"
           b"Subject: \xff+2AA-=?utf-7?b?x?=\r\nMessage-ID: <\xff+2AA-=?utf-7?b?x?=@example.net>\r\n"
           b"Reply-To: \xff+2AA-=?utf-7?b?KzJBQS0=?= <r@example.net>\r\n"
           b"Content-Type: text/plain; charset=utf-7\r\n\r\nbody +2AA- with a lone surrogate\r\n")


def test_a_header_that_made_the_parser_raise_is_handed_over_at_once(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    # The product's defaults for retries: a failed attempt would hold the mailbox 30 s.
    imap = {"max_attempts": 5, "retry_interval": 30}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")], imap=imap).start() as run:
        started = time.monotonic()
        dovecot.deliver("acme", HOSTILE)
        dovecot.deliver("acme", make_message("the next one", message_id="<next@example.com>"))
        emails = run.wait_emails(2, timeout=15)
        took = time.monotonic() - started
        hostile, after = emails
        assert hostile["subject"].endswith("+2AA-x") and "\ufffd" in hostile["subject"]
        assert "\ufffd" in hostile["message_id"]
        assert hostile["reply_to"] and hostile["reply_to"][0].endswith("<r@example.net>")
        assert after["message_id"] == "<next@example.com>"
        assert took < 15  # one retry_interval alone would be 30 s
        db = sqlite3.connect(run.state_dir / "checkpoints.sqlite3")
        try:
            rows = db.execute("SELECT uid, status, attempts FROM ledger ORDER BY uid").fetchall()
        finally:
            db.close()
        assert rows == [(hostile["uid"], "processed", 0), (after["uid"], "processed", 0)]
        log = run.log_text()
        assert "handler failed" not in log and "UnicodeEncodeError" not in log
        status = run.wait_for(lambda s: s["tenants"]["acme"]["processed"] == 2, 10, "2 processed")["tenants"]["acme"]
        assert status["processed"] == 2 and status["failed"] == 0 and status["restarts"] == 0
