"""[cluster] without the supervisor: the pure balancing rules, the lease SQL functions on a real
PostgreSQL (concurrent claimers in parallel sessions), fencing through the real supabase-py
client, and the Cluster object against the PostgREST-compatible test server.

The multi-supervisor end-to-end tests are in tests/tenants/test_cluster_e2e.py.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.config.load import load_config
from supervisor.config.settings import ClusterSettings
from supervisor.errors import ConfigError
from supervisor.tenants.cluster import Cluster, Member, fair_targets, hysteresis, plan_balance
from supervisor.tenants.rows import TenantLoad
from tenant_proc.spec import Secret, TenantSpec
from tenant_proc.store.api import Checkpoint, LeaseLost
from tenant_proc.store.supabase import SupabaseStore
from tests.servers.postgres.pg import PostgresDatabase
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY, PostgrestServer

# --- pure balancing ------------------------------------------------------------------------------

def test_fair_targets_examples() -> None:
    assert fair_targets(30, {"a": 0, "b": 0, "c": 0}) == {"a": 10, "b": 10, "c": 10}
    assert fair_targets(30, {"a": 0, "b": 0, "c": 0, "d": 0}) == dict.fromkeys("abcd", 8)
    assert fair_targets(31, {"a": 0, "b": 0, "c": 0}) == dict.fromkeys("abc", 11)
    # A capped instance takes its cap; the others share the rest.
    assert fair_targets(30, {"a": 4, "b": 0, "c": 0}) == {"a": 4, "b": 13, "c": 13}
    assert fair_targets(30, {"a": 5, "b": 5}) == {"a": 5, "b": 5}  # not enough room: caps
    assert fair_targets(0, {"a": 0}) == {"a": 0}


caps_strategy = st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 40), min_size=1)


@given(active=st.integers(0, 300), caps=caps_strategy)
def test_fair_targets_cover_everything_within_caps(active: int, caps: dict[str, int]) -> None:
    targets = fair_targets(active, caps)
    room = sum(c if c else active for c in caps.values())
    assert sum(targets.values()) >= min(active, room)
    for i, t in targets.items():
        assert 0 <= t and (caps[i] == 0 or t <= caps[i])
    uncapped = [targets[i] for i, c in caps.items() if c == 0 or c > max(targets.values()) - 1]
    if uncapped:
        assert max(uncapped) - min(uncapped) <= 1


def simulate(active: int, caps: dict[str, int], held: dict[str, int], rounds: int = 60) -> list[dict[str, int]]:
    """Instances take turns applying plan_balance (release first, then claim from the free pool);
    returns the held counts after each round."""
    history = []
    for _ in range(rounds):
        for me in sorted(caps):
            members = [Member(i, held[i], caps[i]) for i in sorted(caps)]
            free = active - sum(held.values())
            plan = plan_balance(me, members, active, free, held[me], caps[me])
            held[me] -= plan.release
            free = active - sum(held.values())
            held[me] += min(plan.claim, free)
            assert sum(held.values()) <= active
        history.append(dict(held))
    return history


@settings(max_examples=200, deadline=None)
@given(active=st.integers(0, 120), caps=caps_strategy, data=st.data())
def test_balance_converges_and_then_never_moves(active: int, caps: dict[str, int], data) -> None:
    held = {i: 0 for i in caps}
    # Start from any state that holds each company at most once (e.g. after instances joined).
    for i in sorted(caps):
        free = active - sum(held.values())
        held[i] = data.draw(st.integers(0, min(free, caps[i] or free)))
    history = simulate(active, caps, held)
    final = history[-1]
    assert history[-10:] == [final] * 10, "still moving after 50 rounds: flapping"
    room = sum(c if c else active for c in caps.values())
    assert sum(final.values()) == min(active, room), "companies left unclaimed"
    targets = fair_targets(active, caps)
    for i, n in final.items():
        assert n <= targets[i] + hysteresis(targets[i])


def test_a_fourth_instance_gets_a_share_without_flapping() -> None:
    held = {"a": 10, "b": 10, "c": 10, "d": 0}
    history = simulate(30, dict.fromkeys(held, 0), held, rounds=5)
    assert history[0] == {"a": 8, "b": 8, "c": 8, "d": 6}
    assert all(h == history[0] for h in history)


def test_what_is_being_handed_back_is_not_handed_back_again_nor_replaced() -> None:
    members = [Member("a", 15, 0), Member("b", 10, 0), Member("c", 0, 0)]
    assert plan_balance("a", members, 30, 0, 15, 0).release == 5
    # 5 on their way (processes still stopping): keep the other 10, claim nothing either.
    assert plan_balance("a", members, 30, 5, 10, 0, handing_back=5) == plan_balance(
        "a", members, 30, 5, 10, 0, handing_back=5).__class__(target=10, claim=0, release=0)


def test_hand_back_only_what_others_can_take() -> None:
    # b is at its cap: a has more than its share but nobody can take any.
    members = [Member("a", 20, 0), Member("b", 5, 5)]
    assert plan_balance("a", members, 25, 0, 20, 0).release == 0


# --- config --------------------------------------------------------------------------------------

def test_cluster_needs_supabase(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[cluster]\nenabled = true\n")
    with pytest.raises(ConfigError, match=r"\[cluster\] enabled = true needs"):
        load_config(path, environ={})


def test_cluster_settings_from_environment(tmp_path) -> None:
    env = {"SUPABASE_URL": "http://127.0.0.1:1", "SUPABASE_SERVICE_ROLE_KEY": "k",
           "IDLE_SUPERVISOR_CLUSTER_ENABLED": "true", "IDLE_SUPERVISOR_CLUSTER_LEASE_TTL": "12"}
    config = load_config(None, environ=env)
    assert config.cluster.enabled and config.cluster.lease_ttl == 12
    assert config.cluster.instance_id  # host name + pid by default
    assert not load_config(None, environ={"SUPABASE_URL": "u", "SUPABASE_SERVICE_ROLE_KEY": "k"}).cluster.enabled


# --- SQL functions on PostgreSQL -----------------------------------------------------------------

def add_companies(db: PostgresDatabase, n: int, prefix: str = "c") -> list[str]:
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    for cid in ids:
        db.execute("INSERT INTO companies (id, name, imap_host, imap_username, imap_password) "
                   "VALUES (%s, %s, '127.0.0.1', %s, 'pw')", (cid, cid, cid))
    return ids


def test_concurrent_claims_never_give_a_company_twice(pg_db: PostgresDatabase) -> None:
    ids = add_companies(pg_db, 200)
    claims: list[tuple[str, str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claimer(n: int) -> None:
        with pg_db.connect(autocommit=True) as conn:
            start.wait(5)
            for _ in range(30):  # small bites, many rounds: maximum contention
                rows = conn.execute("SELECT * FROM claim_companies(%s, 30, 7)", (f"i{n}",)).fetchall()
                with lock:
                    claims.extend((cid, f"i{n}", token) for cid, token in rows)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    by_company = Counter(cid for cid, _, _ in claims)
    assert set(by_company) == set(ids)
    assert max(by_company.values()) == 1, "a company was claimed twice"
    tokens = [token for _, _, token in claims]
    assert len(set(tokens)) == len(tokens)
    owners = dict(pg_db.execute("SELECT company_id, owner FROM company_leases"))
    assert owners == {cid: owner for cid, owner, _ in claims}


def test_expired_leases_are_reclaimed_once_with_a_new_token(pg_db: PostgresDatabase) -> None:
    add_companies(pg_db, 50)
    first = dict(pg_db.execute("SELECT * FROM claim_companies('dead', 0.2, 100)"))
    time.sleep(0.3)
    claims: list[tuple[str, int]] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        with pg_db.connect(autocommit=True) as conn:
            rows = conn.execute("SELECT * FROM claim_companies(%s, 30, 100)", (f"i{n}",)).fetchall()
            with lock:
                claims.extend(rows)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(c for c, _ in claims) == sorted(first)  # each exactly once
    assert all(token > max(first.values()) for _, token in claims)
    # The dead owner's renewal now returns nothing: it would stop them all.
    assert pg_db.execute("SELECT * FROM renew_leases('dead', 30)") == []


def test_renew_release_and_inactive_companies(pg_db: PostgresDatabase) -> None:
    add_companies(pg_db, 4)
    pg_db.execute("UPDATE companies SET active = false WHERE id = 'c003'")
    mine = dict(pg_db.execute("SELECT * FROM claim_companies('a', 30, 10)"))
    assert sorted(mine) == ["c000", "c001", "c002"]  # never an inactive company
    assert dict(pg_db.execute("SELECT * FROM renew_leases('a', 30)")) == mine
    assert pg_db.execute("SELECT release_leases('a', ARRAY['c000'])") == [(1,)]
    assert pg_db.execute("SELECT release_leases('b', NULL)") == [(0,)]  # only mine
    again = dict(pg_db.execute("SELECT * FROM claim_companies('b', 30, 10)"))
    assert list(again) == ["c000"] and again["c000"] > mine["c002"]
    assert pg_db.execute("SELECT cluster_leave('a')") == [(2,)]


def test_lease_functions_are_for_the_service_role_only(pg_db: PostgresDatabase) -> None:
    for role in ("anon", "authenticated"):
        with pg_db.connect() as conn:
            conn.execute(f"SET ROLE {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM claim_companies('x', 30, 1)")
    rows = dict(pg_db.execute("SELECT relname, relrowsecurity FROM pg_class WHERE relname IN "
                              "('company_leases', 'supervisor_instances')"))
    assert rows == {"company_leases": True, "supervisor_instances": True}


# --- fencing through supabase-py -----------------------------------------------------------------

def test_stale_token_writes_are_refused_and_do_not_land(pg_db: PostgresDatabase,
                                                        postgrest: PostgrestServer) -> None:
    add_companies(pg_db, 1)
    (old,) = [t for _, t in pg_db.execute("SELECT * FROM claim_companies('old', 1.5, 1)")]
    stale = SupabaseStore(postgrest.url, TEST_SERVICE_KEY, fencing_token=old)
    stale.save_checkpoint("c000", "INBOX", Checkpoint(7, 10))
    stale.mark_done("c000", "INBOX", 7, 11, "<11@x>", "processed")
    assert stale.is_done("c000", "INBOX", 7, 11)
    pg_db.execute("UPDATE company_leases SET expires_at = now()")  # as if it was not renewed
    with pytest.raises(LeaseLost, match="expired"):  # no handler runs on an expired lease
        stale.is_done("c000", "INBOX", 7, 12)
    (new,) = [t for _, t in pg_db.execute("SELECT * FROM claim_companies('new', 30, 1)")]
    fresh = SupabaseStore(postgrest.url, TEST_SERVICE_KEY, fencing_token=new)
    try:
        for write in (lambda: stale.mark_done("c000", "INBOX", 7, 12, "<12@x>", "processed"),
                      lambda: stale.save_checkpoint("c000", "INBOX", Checkpoint(7, 99)),
                      lambda: stale.record_attempt_failure("c000", "INBOX", 7, 13, None, "boom")):
            with pytest.raises(LeaseLost, match="lease lost"):
                write()
        assert fresh.load_checkpoint("c000", "INBOX") == Checkpoint(7, 11)
        assert pg_db.execute("SELECT uid, fencing_token FROM processed_emails") == [(11, old)]
        fresh.mark_done("c000", "INBOX", 7, 12, "<12@x>", "processed")
        assert fresh.record_attempt_failure("c000", "INBOX", 7, 13, None, "boom") == 1
        assert fresh.record_attempt_failure("c000", "INBOX", 7, 13, None, "boom") == 2
        assert pg_db.execute("SELECT last_uid, fencing_token FROM imap_checkpoints") == [(12, new)]
    finally:
        stale.close()
        fresh.close()


def test_a_write_waits_for_no_claim_and_a_claim_waits_for_the_write(pg_db: PostgresDatabase) -> None:
    """The fence locks the lease row FOR SHARE: a claim cannot slip in between check and write."""
    add_companies(pg_db, 1)
    (old,) = [t for _, t in pg_db.execute("SELECT * FROM claim_companies('old', 0.1, 1)")]
    time.sleep(0.2)
    with pg_db.connect() as writer:  # a transaction in progress: checked, not yet committed
        writer.execute("SELECT fenced_save_checkpoint('c000', 'INBOX', 1, 5, %s)", (old,))
        with pg_db.connect(autocommit=True) as claimer:
            # SKIP LOCKED: the claimer does not wait and does not take it while the write runs.
            assert claimer.execute("SELECT * FROM claim_companies('new', 30, 1)").fetchall() == []
        writer.commit()
    assert len(pg_db.execute("SELECT * FROM claim_companies('new', 30, 1)")) == 1


# --- the Cluster object against the test server --------------------------------------------------

def specs_for(ids: list[str]) -> TenantLoad:
    return TenantLoad(specs={cid: TenantSpec(id=cid, name=cid, host="h", port=993, security="tls",
                                             username=cid, password=Secret("pw")) for cid in ids},
                      errors={})


def cluster(postgrest: PostgrestServer, name: str, ttl: float = 3.0) -> Cluster:
    return Cluster(ClusterSettings(enabled=True, instance_id=name, lease_ttl=ttl),
                   postgrest.url, Secret(TEST_SERVICE_KEY), heartbeat_timeout=10, now=0.0)


def test_two_instances_split_hand_back_and_lose(pg_db: PostgresDatabase, postgrest: PostgrestServer) -> None:
    ids = add_companies(pg_db, 10)
    a, b = cluster(postgrest, "a"), cluster(postgrest, "b")
    assert a.select(specs_for(ids), now=0.0).specs == {}  # settling: claims nothing yet
    a.maintain(10.0, lambda c: False)
    load = a.select(specs_for(ids), now=10.0)
    assert len(load.specs) == 10  # alone: everything
    assert all(s.fencing_token == a.held[c] for c, s in load.specs.items())
    b.maintain(10.0, lambda c: False)  # b joins: a's next round hands back half
    actions = a.maintain(20.0, lambda c: True)
    assert len(actions.hand_back) == 5 and not actions.lost
    assert a.maintain(20.1, lambda c: c not in actions.hand_back).claim is False  # released now
    assert len(b.select(specs_for(ids), now=20.2).specs) == 5
    assert a.status(20.3)["held"] == 5 and b.status(20.3)["fair_share"] == 5
    # b's leases are taken over behind its back (as after a pause): b notices on its next renew.
    pg_db.execute("UPDATE company_leases SET owner = 'c', token = token + 1000 WHERE owner = 'b'")
    actions = b.maintain(30.0, lambda c: True)
    assert sorted(actions.lost) == sorted(set(ids) - set(a.held)) and b.held == {}
    a.leave()
    assert pg_db.execute("SELECT count(*) FROM company_leases WHERE owner = 'a'") == [(0,)]


def test_renew_failing_for_a_ttl_stops_everything(pg_db: PostgresDatabase, postgrest: PostgrestServer) -> None:
    ids = add_companies(pg_db, 3)
    a = cluster(postgrest, "a", ttl=3.0)
    a.maintain(10.0, lambda c: False)
    assert len(a.select(specs_for(ids), now=10.0).specs) == 3
    a.maintain(11.0, lambda c: True)  # renewed at 11
    postgrest.fail_with(503)
    assert a.maintain(12.5, lambda c: True).lost == []  # failing, but within the ttl
    actions = a.maintain(14.0, lambda c: True)  # 3 s since the last good renew
    assert sorted(actions.lost) == ids and a.held == {}
