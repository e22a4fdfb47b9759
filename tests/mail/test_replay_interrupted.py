"""Issue 22 item 7: a replay (`idle-supervisor retry`) that a broken connection interrupts is
picked up again after the reconnect, in the same process, and an email whose FETCH breaks every
session ends `failed` again instead of a reconnect loop.

A real Dovecot behind the fault-injecting proxy (tests/servers/proxies/fault_proxy.py), a forked
tenant process as the supervisor runs it, and the `replay` message the supervisor forwards after
`retry` marked the rows (through the same ledger code the CLI uses). The emails first end
`failed` because the proxy refuses their FETCH; the refusals stop before the retry.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ipc import protocol
from tenant_proc.store.failed_ledger import ledger_for
from tenant_proc.store.sqlite import SqliteStore
from tests.harness.faultlib import assert_exactly_once, wait_until
from tests.imap.test_server_faults import by_uid, proxied_tenant
from tests.process.test_tenant_process import Tenant, jsonl_lines, tenants  # noqa: F401 (fixture)
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message
from tests.servers.proxies.fault_proxy import FaultProxy

pytestmark = pytest.mark.integration

SLOW = "tests.harness.handlers_for_tests:slow"


def fail_by_refusals(dovecot: Dovecot, tmp_path: Path, proxy: FaultProxy, subjects: list[str]) -> list[int]:
    """Deliver the emails and let the proxy refuse their FETCH until each one is `failed`."""
    uids = list(range(1, len(subjects) + 1))
    for uid in uids:
        proxy.refuse_fetch(uid)
    for subject in subjects:
        dovecot.deliver("alice", make_message(subject, message_id=f"<{subject}@replay>"))
    wait_until(lambda: all(by_uid(tmp_path).get(u, ("",))[0] == "failed" for u in uids), 30,
               f"UIDs {uids} failed")
    proxy.clear()
    return uids


def retry(tmp_path: Path, tenant: Tenant, uids: list[int]) -> None:
    """What `idle-supervisor retry` and the supervisor's SIGHUP do: mark, then say `replay`."""
    store = SqliteStore(tmp_path / "state" / "checkpoints.sqlite3")
    try:
        assert [e.uid for e in ledger_for(store).mark_replay("t-alice", uids)] == uids
    finally:
        store.close()
    protocol.send(tenant.conn, protocol.replay())


def wait_processed(tmp_path: Path, tenant: Tenant, uids: list[int]) -> dict[int, Any]:
    def done() -> bool:
        assert tenant.proc.is_alive(), f"the tenant process died (exit {tenant.proc.exitcode})"
        return all(by_uid(tmp_path)[u][0] == "processed" for u in uids)

    wait_until(done, 30, f"UIDs {uids} processed after the replay")
    time.sleep(0.5)  # anything handed over twice would show up now
    return by_uid(tmp_path)


def test_a_cut_between_replayed_emails_is_picked_up_after_the_reconnect(
        dovecot: Dovecot, tmp_path: Path, tenants: Any) -> None:
    """The connection dies while the first replayed email is with the handler: the next IMAP
    command (the second one's FETCH) fails, the tenant reconnects, and the second email, claimed
    `retrying` below the checkpoint, is handed over all the same (before: it stayed `retrying`
    until the process restarted, shown by neither `failed` nor `retry`)."""
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy, max_attempts=2, batch_size=1,
                                target=SLOW, options={"path": "emails.jsonl", "seconds": 1.5})
        uids = fail_by_refusals(dovecot, tmp_path, proxy, ["one", "two"])
        assert proxy.logins == 1 and jsonl_lines(tmp_path) == []
        retry(tmp_path, tenant, uids)
        # UID 1 is marked `handling`: fetched, and with the handler (for 1.5 s).
        wait_until(lambda: by_uid(tmp_path)[1][0] == "handling", 15, "UID 1 with the handler")
        for link in list(proxy.links):
            link.close()  # the server "drops the connection"
        outcome = wait_processed(tmp_path, tenant, uids)
        assert_exactly_once(jsonl_lines(tmp_path), {"t-alice": {"one", "two"}})
        assert proxy.logins == 2  # one reconnect, no restart
        assert outcome[1][:2] == ("processed", 0) and outcome[2][:2] == ("processed", 0)


@pytest.mark.parametrize("breaks", [1, None], ids=["once", "always"])
def test_a_fetch_that_breaks_the_connection_during_a_replay_counts_an_attempt(
        dovecot: Dovecot, tmp_path: Path, tenants: Any, breaks: int | None) -> None:
    """The replayed email's own FETCH breaks the session (a line no client can read): one
    attempt counted, reconnect, and the replay goes on; an email that breaks every session is
    `failed` again after max_attempts and the reconnects stop (before: the process crashed on
    the unhandled FetchBroken)."""
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy, max_attempts=2)
        [uid] = fail_by_refusals(dovecot, tmp_path, proxy, ["victim"])
        proxy.junk_fetch(uid, times=breaks)
        retry(tmp_path, tenant, [uid])
        if breaks == 1:
            outcome = wait_processed(tmp_path, tenant, [uid])
            assert outcome[uid][:2] == ("processed", 1)  # the break was counted
            assert_exactly_once(jsonl_lines(tmp_path), {"t-alice": {"victim"}})
            assert proxy.logins == 2
        else:
            def failed_again() -> bool:
                assert tenant.proc.is_alive(), f"the tenant process died (exit {tenant.proc.exitcode})"
                row = by_uid(tmp_path)[uid]
                return row[0] == "failed" and "broke the connection" in (row[2] or "")

            wait_until(failed_again, 30, f"UID {uid} failed again")
            time.sleep(2)  # the reconnect after giving up, and no more: the replay is over
            assert proxy.logins == 3 and jsonl_lines(tmp_path) == []
            assert by_uid(tmp_path)[uid][1] == 2
        assert tenant.proc.is_alive()

