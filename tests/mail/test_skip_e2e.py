"""`[imap] skip` through the real supervisor and a real Dovecot (issue 23): the classes an
answering service must never answer are kept from the handler, recorded `skipped` with their
class, listed by `idle-supervisor failed --status skipped`, counted per tenant (status.json) and
per class (Prometheus), logged at INFO with UID and class, and the checkpoint moves past them
as past a handled email. What is handed over carries the answering fields."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message
from tests.service.test_metrics import free_port, sample, scrape

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1] / "message" / "corpus"
RECOMMENDED = ["bounce", "auto_reply", "auto_generated", "self"]


def _ledger(state_dir: Path) -> dict[int, tuple[str, str | None]]:
    db = sqlite3.connect(state_dir / "checkpoints.sqlite3")
    try:
        rows = db.execute("SELECT uid, status, error FROM ledger WHERE tenant_id = 'acme'").fetchall()
        checkpoint = db.execute("SELECT last_uid FROM checkpoints WHERE tenant_id = 'acme'").fetchone()
    finally:
        db.close()
    return {uid: (status, error) for uid, status, error in rows} | {0: ("checkpoint", str(checkpoint[0]))}


def test_listed_classes_never_reach_the_handler(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    port = free_port()
    tenant = TenantEntry("acme", "acme", "acme-pw", name="Acme AB",
                         extra={"addresses": ["support@acme.example"]})
    run = SupervisorRun(tmp_path, dovecot, [tenant], imap={"skip": RECOMMENDED},
                        extra_sections={"metrics": {"listen": f"127.0.0.1:{port}"}})
    kept_away = {  # what each is skipped as
        "bounce": (CORPUS / "sisimai-set-of-emails" / "lhost-postfix-01.eml").read_bytes(),
        "auto_reply": (CORPUS / "sisimai-set-of-emails" / "rfc3834-01.eml").read_bytes(),
        "auto_generated": (CORPUS / "flanker" / "disposition-notification.eml").read_bytes(),
        "self": make_message("our own answer", sender="Acme Support <Support@Acme.example>",
                             message_id="<own@acme.example>"),
    }
    with run.start():
        for raw in kept_away.values():
            dovecot.deliver("acme", raw)
        dovecot.deliver("acme", (CORPUS / "james-mime4j" / "mimetools-testmsgs__jt-0498.eml").read_bytes())
        dovecot.deliver("acme", make_message(
            "a question", sender="Anna <anna@customer.example>", message_id="<q@customer.example>",
            extra_headers={"Reply-To": "Anna Privat <anna@home.example>", "In-Reply-To": "<a1@acme.example>",
                           "References": "<a0@acme.example> <a1@acme.example>"}))
        emails = run.wait_emails(2, timeout=20)
        status = run.wait_for(lambda s: s["tenants"]["acme"]["skipped"] == 4, 15, "4 skipped")

        # handed over: the list mail (not listed in skip) and the question, with their fields
        by_subject = {e["subject"]: e for e in emails}
        assert len(emails) == 2 and "a question" in by_subject, sorted(by_subject)
        question = by_subject["a question"]
        assert question["reply_to"] == ["Anna Privat <anna@home.example>"]
        assert question["in_reply_to"] == "<a1@acme.example>"
        assert question["references"] == ["<a0@acme.example>", "<a1@acme.example>"]
        assert (question["auto"], question["from_self"], question["list_id"]) == (None, False, None)
        listed = next(e for e in emails if e is not question)
        assert listed["auto"] == "list"  # Precedence: list (majordomo, 1998)

        # the ledger: each skipped email with its class; the checkpoint past all six
        ledger = _ledger(run.state_dir)
        skipped = {error: uid for uid, (state, error) in ledger.items() if state == "skipped"}
        assert set(skipped) == set(kept_away), ledger
        assert ledger[0] == ("checkpoint", str(max(uid for uid in ledger if uid)))
        assert sorted(s for s, _ in ledger.values()) == ["checkpoint", "processed", "processed",
                                                          "skipped", "skipped", "skipped", "skipped"]

        # `failed --status skipped`: the same columns as for failed, the class as the error
        listing = run.cli("failed", "--status", "skipped", "--json")
        assert listing.returncode == 0, listing.stderr
        rows = json.loads(listing.stdout)
        assert {(r["uid"], r["error"]) for r in rows} == {(uid, c) for c, uid in skipped.items()}
        assert all(set(r) == {"tenant_id", "folder", "uidvalidity", "uid", "message_id", "attempts",
                              "error", "failed_at"} for r in rows)
        table = run.cli("failed", "--status", "skipped").stdout
        assert "CLASS" in table and "4 skipped email(s)" in table and "<own@acme.example>" in table
        assert json.loads(run.cli("failed", "--json").stdout) == []

        # counted: status.json and the live status, and Prometheus per class
        tenant_status = status["tenants"]["acme"]
        assert tenant_status["processed"] == 2 and tenant_status["failed"] == 0
        assert tenant_status["skipped_by_class"] == {"bounce": 1, "auto_reply": 1, "auto_generated": 1,
                                                     "list": 0, "bulk": 0, "self": 1}
        live = json.loads(run.cli("status", "--json").stdout)
        assert live["tenants"]["acme"]["skipped"] == 4
        metrics = scrape(port)
        for cls in kept_away:
            assert sample(metrics, "idle_supervisor_emails_skipped_total", tenant="acme", **{"class": cls}) == 1
        assert sample(metrics, "idle_supervisor_emails_skipped_total", tenant="acme", **{"class": "list"}) == 0

        # logged at INFO with UID and class; nothing failed, nothing restarted
        log = run.log_text()
        for cls, uid in skipped.items():
            assert f"uid {uid} " in log and f": skipped ({cls})" in log
        assert "Traceback" not in log and tenant_status["restarts"] == 0
