"""Issue 22 item 9: `idle-supervisor retry` in cluster mode reaches the instance that holds the
company, whichever machine it runs on, and says which one and how soon.

Two real supervisors share one PostgreSQL (behind the PostgREST test server, real supabase-py),
each holding one of two companies (real Dovecot mailboxes). Each company's email fails at once
(the receiver is "broken"); after the fix, `retry` is run on instance a for both companies: the
one a holds and the one b holds, which no signal from a's machine reaches.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.servers.imap.mail_helpers import make_message
from tests.servers.postgres.pg import PostgresDatabase
from tests.tenants.test_cluster import add_companies, cluster
from tests.tenants.test_cluster_e2e import ClusterRun, leases, wait_until

pytestmark = pytest.mark.integration

COMPANIES = ["co0", "co1"]
HANDLER = "tests.harness.handlers_for_tests:refuse_until_fixed"


def ledger(db: PostgresDatabase) -> dict[str, str]:
    return dict(db.execute("SELECT company_id, status FROM processed_emails"))


@pytest.mark.slow
def test_retry_reaches_the_instance_holding_the_company(dovecot, pg_db, postgrest, tmp_path: Path) -> None:
    dovecot.add_users({cid: f"{cid}-pw" for cid in COMPANIES})
    for cid in COMPANIES:
        pg_db.execute("INSERT INTO companies (id, name, imap_host, imap_port, imap_security, "
                      "imap_username, imap_password) VALUES (%s, %s, '127.0.0.1', %s, 'tls', %s, %s)",
                      (cid, cid.upper(), dovecot.imaps_port, cid, f"{cid}-pw"))
    fixed = tmp_path / "receiver-fixed"

    def start(name: str) -> ClusterRun:
        handler = {"target": HANDLER, "path": str(tmp_path / name / "emails.jsonl"), "fixed": str(fixed)}
        run = ClusterRun(tmp_path / name, dovecot, [], supervisor={"tenant_refresh": 300},
                         handler=handler, api=postgrest, instance=name)
        runs.append(run)
        return run.start(wait_running=False)

    runs: list[ClusterRun] = []
    try:
        a, b = start("a"), start("b")
        wait_until(lambda: {o for o, _ in leases(pg_db).values()} == {"a", "b"}
                   and len(a.idle_tenants()) == len(b.idle_tenants()) == 1, 40,
                   "one company each, idle", runs)
        [on_a], [on_b] = sorted(a.idle_tenants()), sorted(b.idle_tenants())
        for cid in COMPANIES:
            dovecot.deliver(cid, make_message(f"for {cid}", message_id=f"<{cid}@replay>"))
        wait_until(lambda: ledger(pg_db) == {cid: "failed" for cid in COMPANIES}, 30,
                   "both emails failed", runs)
        fixed.touch()

        # On a's machine, for the company b holds: no SIGHUP can reach b; b finds the marks at
        # its next lease renewal (every lease_ttl / 3 = 1 s here) and hands the email over.
        retried = a.cli("retry", on_b, "--all")
        assert retried.returncode == 0, retried.stderr
        assert f"instance b holds tenant {on_b}" in retried.stdout, retried.stdout
        assert "within 1s (lease_ttl / 3)" in retried.stdout and "SIGHUP" not in retried.stdout
        wait_until(lambda: [e["tenant_id"] for e in b.emails()] == [on_b], 20,
                   f"{on_b}'s email handed over on b", runs)

        # The company a holds itself: the same, named truthfully.
        retried = a.cli("retry", on_a, "--all")
        assert retried.returncode == 0 and f"instance a holds tenant {on_a}" in retried.stdout
        wait_until(lambda: [e["tenant_id"] for e in a.emails()] == [on_a], 20,
                   f"{on_a}'s email handed over on a", runs)
        wait_until(lambda: ledger(pg_db) == {cid: "processed" for cid in COMPANIES}, 10,
                   "both processed", runs)

        time.sleep(2)  # two more renewals: nothing is handed over twice
        assert [e["subject"] for e in a.emails()] == [f"for {on_a}"]
        assert [e["subject"] for e in b.emails()] == [f"for {on_b}"]
        assert json.loads(a.cli("failed", "--json").stdout) == []
        for run in runs:
            assert all(t["restarts"] == 0 for t in run.status()["tenants"].values())
        # With every instance stopped (their leases released) nobody holds it: said so, rather
        # than promising a hand-over that cannot come before some instance claims it.
        assert a.stop() == 0 and b.stop() == 0
        pg_db.execute("UPDATE processed_emails SET status = 'failed' WHERE company_id = %s", (on_b,))
        retried = a.cli("retry", on_b, "--all")
        assert retried.returncode == 0
        assert f"no live instance holds tenant {on_b}" in retried.stdout, retried.stdout
    finally:
        for run in runs:
            run.kill_tree()


def test_each_renewal_names_the_held_companies_with_claimable_marks(
        pg_db: PostgresDatabase, postgrest, caplog) -> None:
    """cluster_replay_marks (sql/010) answers what the company process can claim: rows marked
    `replay` at or below its checkpoint under the current UIDVALIDITY, of companies this
    instance holds; a database without it costs one warning, never the renewal."""
    ids = add_companies(pg_db, 4)
    pg_db.execute("SELECT * FROM claim_companies('a', 30, 3)")  # c000-c002
    pg_db.execute("SELECT * FROM claim_companies('b', 30, 1)")  # c003
    a, b = cluster(postgrest, "a"), cluster(postgrest, "b")
    for cid in ids:
        pg_db.execute("INSERT INTO imap_checkpoints (company_id, folder, uidvalidity, last_uid) "
                      "VALUES (%s, 'INBOX', 7, 10)", (cid,))
    rows = [("c000", 7, 5), ("c001", 6, 5), ("c002", 7, 11), ("c003", 7, 5)]
    for cid, uidvalidity, uid in rows:  # claimable, an old UIDVALIDITY, above the checkpoint, b's
        pg_db.execute("INSERT INTO processed_emails (company_id, folder, uidvalidity, uid, status) "
                      "VALUES (%s, 'INBOX', %s, %s, 'replay')", (cid, uidvalidity, uid))
    assert a.maintain(20.0, lambda c: True).replay == ["c000"]
    assert b.maintain(20.0, lambda c: True).replay == ["c003"]
    pg_db.execute("UPDATE processed_emails SET status = 'retrying' WHERE company_id = 'c000'")
    assert a.maintain(30.0, lambda c: True).replay == []  # claimed: no more reminders

    pg_db.execute("DROP FUNCTION cluster_replay_marks(text)")
    actions = a.maintain(40.0, lambda c: True)
    assert actions.replay == [] and actions.lost == [] and len(a.held) == 3
    assert "run sql/010_ledger.sql" in caplog.text
    a.maintain(50.0, lambda c: True)
    assert caplog.text.count("cluster_replay_marks") == 1  # said once
