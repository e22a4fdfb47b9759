"""Hostile header fields through the real supervisor (issue 12 items 7, 8, 9): a 100 KB
Message-ID, a Message-ID that decodes to a NUL, ANSI escapes and CR/LF in a logged field, and a
company name with `%`. Each email is handled exactly once, no tenant crashes or restarts, and
the log stays one line per event, without `--- Logging error ---`, raw escapes or forged lines.
"""
from __future__ import annotations

import time

import pytest

from tests.harness.supervisor_run import SupabaseRun, SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message
from tests.servers.postgres.pg import PostgresDatabase

pytestmark = pytest.mark.integration

CRLF = b"\r\n"
NAME = "100% Nöjd AB"


def raw(message_id: bytes, subject: bytes) -> bytes:
    return CRLF.join([b"From: a@example.com", b"To: b@example.com", b"Subject: " + subject,
                      b"Message-ID: " + message_id, b"", b"body", b""])


HUGE_ID = b"<" + b"h" * 100_000 + b"@t>"
NUL_ID = b"=?utf-8?q?<x=00y@t>?="
# Decodes to ESC [31m ... CR LF and a line that would look like one of ours.
EVIL_ID = b"=?utf-8?q?<evil=1B[31mred=0D=0A2026-01-01_00:00:00_INFO_[Other_AB]_forged@t>?="


def assert_clean_log(log: str) -> None:
    assert "Logging error" not in log and "Traceback" not in log and "crashed" not in log, log[-3000:]
    assert "\x1b" not in log and not any(line.startswith("2026-01-01") for line in log.splitlines())
    assert max(len(line) for line in log.splitlines()) < 5000


def test_hostile_fields_are_handled_once_and_the_log_stays_clean(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    tenant = TenantEntry("acme", "acme", "acme-pw", name=NAME)
    with SupervisorRun(tmp_path, dovecot, [tenant]).start() as run:
        for message_id, subject in ((HUGE_ID, b"huge id"), (NUL_ID, b"nul id"), (EVIL_ID, b"evil id"),
                                    (b"<s@t>", b"s" * 60_000)):
            dovecot.deliver("acme", raw(message_id, subject))
        dovecot.deliver("acme", make_message("normal after all that", message_id="<normal@t>"))
        run.wait_emails(5, timeout=30)
        time.sleep(2)  # a crash-and-retry would hand some over again meanwhile
        emails = run.emails()
        assert len(emails) == 5 and len({e["uid"] for e in emails}) == 5, [e["subject"][:20] for e in emails]
        by_subject = {e["subject"][:7]: e for e in emails}
        assert by_subject["huge id"]["message_id"].startswith("<hhhh")
        assert by_subject["nul id"]["message_id"] == "<x\x00y@t>"  # the handler sees what was sent
        status = run.tenant("acme")
        assert status["restarts"] == 0 and status["processed"] == 5 and status["failed"] == 0
        log = run.log_text()
        assert log.count(f"[{NAME}] processed uid") == 5
        assert "<evil\\x1b[31mred 2026-01-01" in log  # ESC escaped and visible; CR/LF unfolded
        assert not any(line.startswith("2026-01-01") for line in log.splitlines())
        assert_clean_log(log)


@pytest.mark.slow
def test_nul_message_id_with_supabase_state_is_handled_once(dovecot, pg_db: PostgresDatabase, postgrest, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    pg_db.execute(
        "INSERT INTO companies (id, name, imap_host, imap_port, imap_security, imap_username, "
        "imap_password) VALUES ('acme', %s, '127.0.0.1', %s, 'tls', 'acme', 'acme-pw')",
        (NAME, dovecot.imaps_port))
    run = SupabaseRun(tmp_path, dovecot, [], api=postgrest, imap={"retry_interval": 1})
    with run.start(wait_running=False):
        run.wait_tenants({"acme"})
        dovecot.deliver("acme", raw(NUL_ID, b"nul id"))
        dovecot.deliver("acme", raw(HUGE_ID, b"huge id"))
        run.wait_emails(2, timeout=30)
        time.sleep(3)  # before the fix: the handler re-ran about once a second
        emails = run.emails()
        assert sorted(e["subject"] for e in emails) == ["huge id", "nul id"], len(emails)
        rows = pg_db.execute("SELECT status, message_id, attempts FROM processed_emails ORDER BY uid")
        assert [r[0] for r in rows] == ["processed", "processed"]
        assert rows[0][1] == "<xy@t>" and rows[1][1].startswith("<hhhh") and len(rows[1][1]) < 3000
        assert run.tenant("acme")["restarts"] == 0
        assert_clean_log(run.log_text())
