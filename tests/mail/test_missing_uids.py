"""UIDs the server lists but does not return (issue 21 item 1, issue 22 item 10), against a Dovecot
that answers as Exchange Online does (tests/servers/proxies/providers.py: UID SEARCH lists the
UID, every FETCH answer leaves it out).

Never skipped in silence: recorded durably before the checkpoint moves past it, the mail after
it handed over meanwhile, asked for again at every catch-up, handed over once served, `failed`
after missing_uid_timeout (listed by `failed`, taken by `retry`), `expunged` once SEARCH no longer
lists it. A replay meets the same rule.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from ipc import protocol
from tenant_proc.store.failed_ledger import SqliteFailedLedger
from tenant_proc.store.sqlite import SqliteStore
from tests.harness.faultlib import wait_until
from tests.imap.test_server_faults import by_uid, deliver_all, proxied_tenant, wait_done
from tests.process.test_tenant_process import jsonl_lines, tenants  # noqa: F401 (fixture)
from tests.servers.proxies.providers import ProviderProxy

pytestmark = pytest.mark.integration
TENANT = "t-alice"
HIDDEN = 2


def missing_rows(tmp_path: Path) -> dict[int, float]:
    db = sqlite3.connect(tmp_path / "state" / "checkpoints.sqlite3")
    try:
        return dict(db.execute("SELECT uid, first_seen FROM missing_uids WHERE tenant_id = ?",
                               (TENANT,)).fetchall())
    except sqlite3.OperationalError:  # no such table: the code before issue 21
        return {}
    finally:
        db.close()


def subjects(tmp_path: Path) -> list[str]:
    return [line["subject"] for line in jsonl_lines(tmp_path)]


def exchange(dovecot) -> ProviderProxy:
    return ProviderProxy((dovecot.host, dovecot.imap_port), "exchange")


def test_a_uid_hidden_for_a_while_is_handed_over_once_it_is_served(dovecot, tmp_path, tenants):
    with exchange(dovecot) as proxy:
        proxy.hide_uid(HIDDEN, user="alice")
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy, reconcile_interval=1.0)
        deliver_all(dovecot)
        wait_done(tmp_path, [1, 3])
        assert subjects(tmp_path) == ["first", "third"]  # the mail after it was not held back
        assert set(missing_rows(tmp_path)) == {HIDDEN}  # recorded before the checkpoint passed it
        assert HIDDEN not in by_uid(tmp_path)
        proxy.reveal_uid(HIDDEN)
        outcome = wait_done(tmp_path, [HIDDEN])  # asked again at the next reconcile's catch-up
        assert outcome[HIDDEN][:2] == ("processed", 0)
        assert subjects(tmp_path) == ["first", "third", "victim"]  # UID order within what is served
        assert missing_rows(tmp_path) == {}
        assert proxy.logins == 1 and proxy.fetches_hidden >= 2
        assert tenant.stop() == 0


def test_a_restart_still_knows_a_hidden_uid(dovecot, tmp_path, tenants):
    with exchange(dovecot) as proxy:
        proxy.hide_uid(HIDDEN, user="alice")
        first = proxied_tenant(dovecot, tmp_path, tenants, proxy)
        deliver_all(dovecot)
        wait_done(tmp_path, [1, 3])
        assert first.stop() == 0
        proxy.reveal_uid(HIDDEN)
        # The checkpoint stands at 3: only the record brings UID 2 back.
        proxied_tenant(dovecot, tmp_path, tenants, proxy)
        outcome = wait_done(tmp_path, [HIDDEN])
        assert outcome[HIDDEN][0] == "processed"
        assert subjects(tmp_path) == ["first", "third", "victim"]
        assert missing_rows(tmp_path) == {}


def test_a_uid_never_served_is_failed_after_the_timeout_and_retry_takes_it(dovecot, tmp_path, tenants):
    with exchange(dovecot) as proxy:
        proxy.hide_uid(HIDDEN, user="alice")
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy, reconcile_interval=0.5,
                                missing_uid_timeout=2.0)
        deliver_all(dovecot)
        outcome = wait_done(tmp_path, [1, 2, 3])
        status, attempts, error = outcome[HIDDEN]
        assert status == "failed" and "listed this UID (UID SEARCH) but never returned it" in error
        assert missing_rows(tmp_path) == {}
        beat = tenant.wait_for(lambda m: m["type"] == "heartbeat" and m["counters"]["failed"] == 1)
        assert "never returned it" in (beat["last_error"] or "")
        ledger = SqliteFailedLedger(SqliteStore(tmp_path / "state" / "checkpoints.sqlite3"))
        assert [(e.tenant_id, e.uid) for e in ledger.list_failed()] == [(TENANT, HIDDEN)]  # `failed`

        proxy.reveal_uid(HIDDEN)  # the server serves it at last; an operator runs `retry`
        assert [e.uid for e in ledger.mark_replay(TENANT, [HIDDEN])] == [HIDDEN]
        protocol.send(tenant.conn, protocol.replay())
        wait_until(lambda: by_uid(tmp_path)[HIDDEN][0] == "processed", 20, "the replayed UID")
        assert subjects(tmp_path) == ["first", "third", "victim"]
        assert proxy.logins == 1


def test_a_hidden_uid_expunged_meanwhile_is_recorded_expunged(dovecot, tmp_path, tenants):
    with exchange(dovecot) as proxy:
        proxy.hide_uid(HIDDEN, user="alice")
        proxied_tenant(dovecot, tmp_path, tenants, proxy, reconcile_interval=0.5)
        deliver_all(dovecot)
        wait_done(tmp_path, [1, 3])
        dovecot._doveadm("expunge", "-u", "alice", "mailbox", "INBOX", "uid", str(HIDDEN))
        outcome = wait_done(tmp_path, [HIDDEN])
        assert outcome[HIDDEN][:2] == ("expunged", 0)
        assert missing_rows(tmp_path) == {}
        assert subjects(tmp_path) == ["first", "third"]


# ---- a replay meets the same server (issue 22 item 10) -------------------------------------

def _handled_then_marked_for_replay(dovecot, tmp_path, tenants, proxy) -> None:
    """Three emails handled; UID 2's row then marked `replay`, as `retry` leaves a failed one."""
    first = proxied_tenant(dovecot, tmp_path, tenants, proxy)
    deliver_all(dovecot)
    wait_done(tmp_path, [1, 2, 3])
    assert first.stop() == 0
    db = sqlite3.connect(tmp_path / "state" / "checkpoints.sqlite3")
    with db:
        db.execute("UPDATE ledger SET status = 'replay', attempts = 0 WHERE uid = ?", (HIDDEN,))
    db.close()


def test_a_replayed_uid_the_server_lists_but_does_not_return_is_not_failed(dovecot, tmp_path, tenants):
    with exchange(dovecot) as proxy:
        _handled_then_marked_for_replay(dovecot, tmp_path, tenants, proxy)
        proxy.hide_uid(HIDDEN, user="alice")
        proxied_tenant(dovecot, tmp_path, tenants, proxy, reconcile_interval=0.5)  # replays at start
        wait_until(lambda: HIDDEN in missing_rows(tmp_path), 20, "the replayed UID recorded as missing")
        time.sleep(1.5)  # a few catch-ups: still asked for, not failed
        assert by_uid(tmp_path)[HIDDEN][0] != "failed"
        proxy.reveal_uid(HIDDEN)
        wait_until(lambda: by_uid(tmp_path)[HIDDEN][0] == "processed", 20, "the replayed UID handed over")
        assert subjects(tmp_path) == ["first", "victim", "third", "victim"]
        assert missing_rows(tmp_path) == {}


def test_a_replayed_uid_gone_from_the_mailbox_is_expunged_not_failed(dovecot, tmp_path, tenants):
    with exchange(dovecot) as proxy:
        _handled_then_marked_for_replay(dovecot, tmp_path, tenants, proxy)
        dovecot._doveadm("expunge", "-u", "alice", "mailbox", "INBOX", "uid", str(HIDDEN))
        proxied_tenant(dovecot, tmp_path, tenants, proxy)
        wait_until(lambda: by_uid(tmp_path)[HIDDEN][0] not in ("replay", "retrying"), 20,
                   "the replayed UID settled")
        assert by_uid(tmp_path)[HIDDEN][:2] == ("expunged", 0)


# ---- the search and the FETCH it is held against (no server: tests/mail/test_checkpoint_property.py's world)

def test_a_hidden_uid_arriving_between_the_search_and_the_fetch_is_recorded(tmp_path):
    """The search runs first: mail arriving before the FETCH is in the FETCH only. A held-back UID
    among it leaves a gap above what the search listed; a second search tells it from an
    expunge, so the checkpoint never passes it unrecorded."""
    from tests.mail.test_checkpoint_property import PropertyWorld

    world = PropertyWorld(tmp_path)
    world.imap.add("ok")
    world.imap.arriving = ["hidden", "ok", "ok"]  # UID 2 held back, 3 and 4 served
    world.catch_up()
    assert world.store.load_checkpoint("t", "INBOX").last_uid == 4
    assert set(world.store.missing_uids("t", "INBOX", world.imap.uidvalidity)) == {2}
    assert sorted(uid for _, uid in world.ok_calls) == [1, 3, 4]
    world.imap.hidden = set()
    world.catch_up()
    assert sorted(uid for _, uid in world.ok_calls) == [1, 2, 3, 4]
    assert world.store.missing_uids("t", "INBOX", world.imap.uidvalidity) == {}


def test_a_gap_the_server_never_lists_is_not_recorded(tmp_path):
    """A UID that neither the FETCH nor the search returns was expunged before we saw it."""
    from tests.mail.test_checkpoint_property import PropertyWorld

    world = PropertyWorld(tmp_path)
    world.imap.add("ok")
    world.catch_up()
    world.imap.add("ok")
    world.imap.add("ok")
    del world.imap.messages[2]  # expunged before the tenant looked
    world.catch_up()
    assert world.store.load_checkpoint("t", "INBOX").last_uid == 3
    assert world.store.missing_uids("t", "INBOX", world.imap.uidvalidity) == {}
    assert sorted(uid for _, uid in world.ok_calls) == [1, 3]
    assert (world.imap.uidvalidity, 2) not in world.ledger()  # nothing to hand over, no row
