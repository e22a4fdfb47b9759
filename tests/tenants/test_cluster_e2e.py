"""[cluster] end to end: several real supervisors (`python -m supervisor run`) on one machine share
30 companies through leases in a real PostgreSQL (behind the PostgREST-compatible test server,
real supabase-py everywhere), each company a real Dovecot mailbox.

One run, in steps, so the suite stays well under its budget: three instances split the
companies; one is SIGKILLed and its companies move; one is SIGSTOPped past its lease and, once
resumed, stops its companies while its stale writes are refused; a fourth joins and nobody
flaps; and across all of it every email is processed exactly once.
"""
from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from tests.harness.supervisor_run import SupabaseRun
from tests.servers.imap.mail_helpers import make_message
from tests.servers.postgres.pg import PostgresDatabase
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL = 3.0  # lease_ttl: renewed every second
COMPANIES = [f"co{i:02d}" for i in range(30)]


@dataclass
class ClusterRun(SupabaseRun):
    """A supervisor with its companies and state in Supabase and [cluster] on."""

    instance: str = ""

    def write_config(self) -> None:
        self.extra_sections["cluster"] = {"enabled": True, "instance_id": self.instance,
                                          "lease_ttl": TTL}
        super().write_config()

    def idle_tenants(self) -> set[str]:
        return {t for t, s in self.status()["tenants"].items() if s["state"] == "idle"}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, runs: list[ClusterRun]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    logs = "\n".join(f"--- {r.instance}:\n{r.log_text()[-2500:]}" for r in runs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def leases(db: PostgresDatabase) -> dict[str, tuple[str | None, int]]:
    """company -> (owner of a live lease or None, token)."""
    rows = db.execute("SELECT company_id, CASE WHEN expires_at > now() THEN owner END, token "
                      "FROM company_leases")
    return {cid: (owner, token) for cid, owner, token in rows}


def held_by(db: PostgresDatabase) -> Counter:
    return Counter(owner for owner, _ in leases(db).values() if owner)


def balanced(db: PostgresDatabase, runs: list[ClusterRun], low: int, high: int) -> bool:
    """Every company held once by a live instance within [low, high], and running (idle) there."""
    counts = held_by(db)
    if sum(counts.values()) != len(COMPANIES) or set(counts) != {r.instance for r in runs}:
        return False
    if not all(low <= n <= high for n in counts.values()):
        return False
    running = [r.idle_tenants() for r in runs]
    owners = leases(db)
    return all(owners[c][0] == r.instance for r, ids in zip(runs, running) for c in ids) \
        and sum(len(ids) for ids in running) == len(COMPANIES)


def test_three_supervisors_share_move_fence_and_rebalance(dovecot, pg_db, postgrest, tmp_path) -> None:
    dovecot.add_users({cid: f"{cid}-pw" for cid in COMPANIES})
    for cid in COMPANIES:
        pg_db.execute("INSERT INTO companies (id, name, imap_host, imap_port, imap_security, "
                      "imap_username, imap_password) VALUES (%s, %s, '127.0.0.1', %s, 'tls', %s, %s)",
                      (cid, cid.upper(), dovecot.imaps_port, cid, f"{cid}-pw"))
    sent: list[tuple[str, str]] = []

    def send(cids: list[str], tag: str) -> None:
        for cid in cids:
            subject = f"{tag} {cid}"
            dovecot.deliver(cid, make_message(subject))
            sent.append((cid, subject))

    def processed() -> set[tuple[str, str]]:
        return {(e["tenant_id"], e["subject"]) for r in started for e in r.emails()}

    def start(name: str) -> ClusterRun:
        run = ClusterRun(tmp_path / name, dovecot, [], supervisor={"tenant_refresh": 300},
                         api=postgrest, instance=name)
        everyone.append(run)
        started.append(run)
        return run.start(wait_running=False)

    everyone: list[ClusterRun] = []  # the live ones
    started: list[ClusterRun] = []
    try:
        a, b, c = start("a"), start("b"), start("c")

        # 1. Three instances, 30 companies: about ten each, each company running exactly once.
        wait_until(lambda: balanced(pg_db, [a, b, c], 8, 12), 40, "three-way balance", everyone)
        send(COMPANIES, "first")
        wait_until(lambda: set(sent) <= processed(), 30, "first round processed", everyone)
        status = a.status()["supervisor"]["cluster"]
        assert status["instance_id"] == "a" and status["live_instances"] == 3
        assert "cluster instance a: holds " in a.cli("status").stdout
        listing = a.cli("cluster")
        assert listing.returncode == 0 and "3 live instances, 30 companies held" in listing.stdout

        # 2. SIGKILL c: its companies run elsewhere within 2 x lease_ttl; mail sent meanwhile is
        #    processed.
        c_companies = sorted(cid for cid, (owner, _) in leases(pg_db).items() if owner == "c")
        assert c.proc is not None
        c.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        everyone.remove(c)
        send(c_companies, "while c is dead")
        wait_until(lambda: not {o for cid, (o, _) in leases(pg_db).items() if cid in c_companies}
                   - {"a", "b"}, 2 * TTL + 1, "c's companies claimed by a and b", everyone)
        wait_until(lambda: set(c_companies) <= a.idle_tenants() | b.idle_tenants(),
                   2 * TTL + 3, "c's companies running on a and b", everyone)
        moved_after = time.monotonic() - killed_at
        print(f"c's {len(c_companies)} companies running on a and b {moved_after:.1f}s after SIGKILL")
        assert moved_after <= 2 * TTL + 3
        wait_until(lambda: set(sent) <= processed(), 20, "mail sent while c was dead", everyone)
        wait_until(lambda: balanced(pg_db, [a, b], 14, 16), 20, "a and b at 15 each", everyone)

        # 3. SIGSTOP b past its lease: a takes over b's companies. b's tenant processes (still
        #    running, their parent frozen) have their writes refused and exit. After SIGCONT, b
        #    notices on its next renewal and stops them; nothing it wrote after losing lands.
        before = leases(pg_db)
        b_companies = sorted(cid for cid, (owner, _) in before.items() if owner == "b")
        b_tokens = [before[cid][1] for cid in b_companies]
        b_rows_before = pg_db.execute(
            "SELECT count(*) FROM processed_emails WHERE fencing_token = ANY(%s)", (b_tokens,))
        assert b.proc is not None
        b.proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: held_by(pg_db) == Counter({"a": 30}), 3 * TTL + 2,
                       "a holds all 30", everyone)
            send(b_companies, "while b is frozen")
            wait_until(lambda: set(sent) <= processed(), 20, "mail sent while b was frozen",
                       everyone)
        finally:
            b.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: "lease lost" in b.log_text(), 10, "b reports the lost leases", everyone)
        wait_until(lambda: not b.status()["tenants"], 10, "b stopped the companies it lost", everyone)
        # The database holds nothing written with b's old tokens after it lost them: the ledger
        # rows carrying them are the ones from before the freeze, every checkpoint is a's.
        assert pg_db.execute("SELECT count(*) FROM processed_emails WHERE fencing_token = ANY(%s)",
                             (b_tokens,)) == b_rows_before
        assert pg_db.execute("SELECT count(*) FROM imap_checkpoints WHERE company_id = ANY(%s) "
                             "AND fencing_token = ANY(%s)", (b_companies, b_tokens)) == [(0,)]

        # 4. b is back and a fourth instance joins: three live instances again, ten each.
        d = start("d")
        wait_until(lambda: balanced(pg_db, [a, b, d], 8, 12), 40, "a, b and d balanced", everyone)
        # Quiet period: no lease changes hands, nobody's tenants restart.
        snapshot = leases(pg_db)
        pids = {r.instance: r.child_pids() for r in (a, b, d)}
        time.sleep(3 * TTL)
        assert leases(pg_db) == snapshot, "leases moved during a quiet period: flapping"
        print(f"held after d joined: {dict(held_by(pg_db))}; no lease changed in {3 * TTL:g}s")
        assert {r.instance: r.child_pids() for r in (a, b, d)} == pids

        send(COMPANIES, "last")
        wait_until(lambda: set(sent) <= processed(), 30, "last round processed", everyone)

        # 5. SIGTERM releases every lease at once.
        for run in (a, b, d):
            run.proc.send_signal(signal.SIGTERM)
        for run in (a, b, d):
            assert run.proc.wait(30) == 0
        assert held_by(pg_db) == Counter()
        assert pg_db.execute("SELECT count(*) FROM supervisor_instances WHERE instance_id <> 'c'") == [(0,)]
    finally:
        for run in started:
            if run.proc is not None and run.proc.poll() is None:
                try:
                    run.proc.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
            run.kill_tree()

    # Every email processed exactly once: jsonl lines of every instance, and the ledger.
    lines = [e for r in started for e in r.emails()]
    keys = Counter((e["tenant_id"], e["uidvalidity"], e["uid"]) for e in lines)
    assert max(keys.values()) == 1, f"processed twice: {[k for k, n in keys.items() if n > 1]}"
    assert sorted((e["tenant_id"], e["subject"]) for e in lines) == sorted(sent)
    ledger = pg_db.execute("SELECT company_id, folder, uidvalidity, uid, count(*) FROM processed_emails "
                           "WHERE status = 'processed' GROUP BY 1, 2, 3, 4")
    assert len(ledger) == len(sent) and all(n == 1 for *_, n in ledger)
    assert TEST_SERVICE_KEY not in "".join(r.log_text() for r in started)
