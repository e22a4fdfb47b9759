"""Bad input through the real product (issue 4, part 3): hostile MIME, broken encodings, 8-bit
headers, empty and oversized messages, a burst of 3,000, a folder that does not exist and a server
that drops the connection mid-FETCH. Each: handled (or clearly failed), nothing lost, nothing
twice, and the tenant keeps going.
"""
from __future__ import annotations

import time

import pytest

from tests.harness.faultlib import assert_exactly_once, maildir_deliver
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message
from tests.servers.proxies.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

CRLF = b"\r\n"


def raw(*lines: bytes) -> bytes:
    return CRLF.join(lines) + CRLF


HOSTILE = {
    "<no-end-boundary@t>": raw(
        b"From: a@example.com", b"Subject: multipart without its end", b"Message-ID: <no-end-boundary@t>",
        b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="XYZ"', b"",
        b"--XYZ", b"Content-Type: text/plain", b"", b"first part, and then nothing closes"),
    "<unused-boundary@t>": raw(
        b"From: a@example.com", b"Subject: boundary never used", b"Message-ID: <unused-boundary@t>",
        b'Content-Type: multipart/alternative; boundary="never"', b"", b"just text"),
    "<nested-garbage@t>": raw(
        b"From: a@example.com", b"Subject: nested garbage", b"Message-ID: <nested-garbage@t>",
        b'Content-Type: multipart/mixed; boundary="a"', b"", b"--a",
        b'Content-Type: multipart/related; boundary="b"', b"", b"--b", b"Content-Type: \x00\xff/;;;",
        b"Content-Disposition: attachment; filename*=utf-8''%ZZ%E9", b"", b"\xff\xfe garbage", b"--a--"),
    "<bad-base64@t>": raw(
        b"From: a@example.com", b"Subject: invalid base64", b"Message-ID: <bad-base64@t>",
        b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: base64", b"",
        b"!!!! not base64 at all ====", b"SGVsbG8=garbage"),
    "<unknown-charset@t>": raw(
        b"From: a@example.com", b"Subject: =?x-no-such-charset?B?SGVsbG8=?= and =?utf-8?Q?broken=ZZ",
        b"Message-ID: <unknown-charset@t>", b"Content-Type: text/plain; charset=x-no-such-charset",
        b"Content-Transfer-Encoding: quoted-printable", b"", b"caf=E9 =ZZ =\xff"),
    "<eight-bit-headers@t>": raw(
        b"From: J\xc3\xb6rg M\xfcller <jm@example.com>", b"To: \xe5\xe4\xf6 <x@example.com>",
        b"Subject: R\xc3\xa4kning f\xf6r \xe9t\xe9 \xff\xfe", b"Message-ID: <eight-bit-headers@t>",
        b"Date: not a date at all", b"", b"body with \xe9 latin-1 and \xc3\xa9 utf-8"),
    "<headers-only@t>": raw(b"From: a@example.com", b"Subject: empty body", b"Message-ID: <headers-only@t>", b""),
    "<no-blank-line@t>": raw(b"Subject: no body and no blank line", b"Message-ID: <no-blank-line@t>"),
    "<long-header@t>": raw(b"Subject: " + b"x" * 20000, b"Message-ID: <long-header@t>", b"", b"ok"),
}


def test_hostile_messages_are_each_handled_once_and_the_tenant_keeps_going(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    imap = {"max_message_bytes": 100_000}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")], imap=imap).start() as run:
        for message in HOSTILE.values():
            dovecot.deliver("acme", message)
        big = make_message("too big", body="y" * 150_000, message_id="<too-big@t>")
        dovecot.deliver("acme", big)
        dovecot.deliver("acme", make_message("normal after all that", message_id="<normal@t>"))
        emails = run.wait_emails(len(HOSTILE) + 2, timeout=20)
        time.sleep(1)
        emails = run.emails()
        by_id = {e["message_id"]: e for e in emails}
        assert set(by_id) == {*HOSTILE, "<too-big@t>", "<normal@t>"}, sorted(by_id)
        assert len({(e["uidvalidity"], e["uid"]) for e in emails}) == len(emails) == len(HOSTILE) + 2
        assert by_id["<too-big@t>"]["truncated"] is True and by_id["<too-big@t>"]["size"] > 150_000
        assert by_id["<too-big@t>"]["subject"] == "too big"
        assert not any(e["truncated"] for e in emails if e["message_id"] != "<too-big@t>")
        assert "R\u00e4kning" in by_id["<eight-bit-headers@t>"]["subject"]
        status = run.tenant("acme")
        assert status["state"] == "idle" and status["processed"] == len(emails) and status["failed"] == 0
        log = run.log_text()
        assert log.count("processed uid") == len(emails)
        assert "Traceback" not in log and "crashed" not in log and status["restarts"] == 0


@pytest.mark.slow
def test_three_thousand_at_once_in_bounded_batches(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    dovecot.deliver("acme", make_message("first"))  # creates the Maildir
    with TcpProxy((dovecot.host, dovecot.imap_port)) as proxy:
        entry = TenantEntry("acme", "acme", "acme-pw", security="plain", port=proxy.port, ca_file=None)
        with SupervisorRun(tmp_path, dovecot, [entry], imap={"batch_size": 100}).start() as run:
            fetches_before = len(proxy.fetch_commands)
            started = time.monotonic()
            subjects = {f"burst {i}" for i in range(3000)}
            for subject in sorted(subjects):  # an MTA dropping 3,000 files into the Maildir
                maildir_deliver(dovecot, "acme", make_message(subject))
            run.wait_emails(3000, timeout=90)
            took = time.monotonic() - started
            time.sleep(1)
            assert_exactly_once(run.emails(), {"acme": subjects})
            assert len(run.emails()) == 3000
            lines = proxy.fetch_commands[fetches_before:]
            # The next UID's first bytes ride along with each size FETCH ("BODY.PEEK[]<0.N>");
            # only an email that did not come whole that way is fetched whole in a batch.
            body_fetches = [line for line in lines if b"BODY.PEEK[] " in line]
            early = {u for line in lines if b"BODY.PEEK[]<" in line for u in _uids(line)}
            whole = [u for line in body_fetches for u in _uids(line)]
            handled = {e["uid"] for e in run.emails()}
            sizes = [len(_uids(line)) for line in body_fetches]
            # bounded batches: never one FETCH for everything, every UID fetched whole at most
            # once, and every email either in a batch or brought whole by the prefetch
            assert max(sizes) <= 100 and len(whole) == len(set(whole)), sizes
            assert set(whole) <= handled and handled - set(whole) <= early
            fetches = len(body_fetches)
            assert run.tenant("acme")["state"] == "idle" and run.tenant("acme")["restarts"] == 0
    print(f"\n3,000 at once: all handled once in {took:.1f}s, {fetches} body FETCHes of <= 100")


def _uids(fetch_line: bytes) -> list[int]:
    """The UIDs `TAG UID FETCH 1,2,5:9 (...)` names."""
    uid_set = fetch_line.split(b" FETCH ", 1)[1].split(b" ", 1)[0]
    uids: list[int] = []
    for part in uid_set.split(b","):
        low, _, high = part.partition(b":")
        uids += range(int(low), int(high) + 1) if high else [int(low)]
    return uids


def test_missing_folder_fails_clearly_and_the_others_run(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    tenants = [TenantEntry("acme", "acme", "acme-pw"),
               TenantEntry("lost", "acme", "acme-pw", name="Lost Folder AB", folder="Projects/Nope")]
    with SupervisorRun(tmp_path, dovecot, tenants).start() as run:
        status = run.wait_for(lambda s: s["tenants"]["lost"]["state"] == "failed", 15, "failed")
        error = status["tenants"]["lost"]["last_error"]
        assert "'Projects/Nope' does not exist" in error, error
        assert status["tenants"]["lost"]["restarts"] == 0 and status["tenants"]["lost"]["retry_in"] > 800
        assert "[Lost Folder AB] failed: config: folder 'Projects/Nope' does not exist" in run.log_text()
        dovecot.deliver("acme", make_message("others unaffected"))
        assert run.wait_emails(1)[0]["tenant_id"] == "acme"


def test_connection_dropped_mid_fetch_reconnects_and_processes_once(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    with TcpProxy((dovecot.host, dovecot.imap_port)) as proxy:
        entry = TenantEntry("acme", "acme", "acme-pw", security="plain", port=proxy.port, ca_file=None)
        with SupervisorRun(tmp_path, dovecot, [entry], imap={"reconnect_backoff_max": 2}).start() as run:
            proxy.cut_fetch_after(10_000, times=2)  # the next two body FETCHes die 10 KB in
            sent_at = time.monotonic()
            dovecot.deliver("acme", make_message("large enough to be cut", body="z" * 60_000))
            dovecot.deliver("acme", make_message("the one after it"))
            run.wait_emails(2, timeout=20)
            took = time.monotonic() - sent_at
            time.sleep(1)
            emails = run.emails()
            assert sorted(e["subject"] for e in emails) == ["large enough to be cut", "the one after it"]
            assert len({e["uid"] for e in emails}) == 2
            assert proxy.cuts_done == 2
            status = run.wait_for(lambda s: s["tenants"]["acme"]["state"] == "idle", 10, "idle")
            assert status["tenants"]["acme"]["reconnects"] >= 2 and status["tenants"]["acme"]["restarts"] == 0
            assert "reconnecting in" in run.log_text()
    print(f"\ncut mid-FETCH twice: both emails handled once, {took:.1f}s after delivery")
