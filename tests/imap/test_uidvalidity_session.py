"""A UIDVALIDITY change while the tenant stays connected (issue 12 item 4), with real servers.

The tenant idles; the folder is renumbered on the server; the test forces no reconnect. The
periodic reconcile (every `reconcile_interval`) is what makes the tenant notice; what the
servers do to the selected session differs (checked here):
- Dovecot 2.3.19 (`doveadm mailbox update --uid-validity`): nothing by itself while it idles,
  and a STATUS from that session still answers the old UIDVALIDITY; the reconcile's next
  command gets `* BYE IMAP session state is inconsistent, please relogin.` and the tenant
  reconnects on its own.
- Courier 5.0 (its `courierimapuiddb` removed, as a restore or migration does): the session
  goes on as if nothing happened, but STATUS answers the new UIDVALIDITY: the reconcile's
  STATUS (UIDVALIDITY UIDNEXT) resynchronises in the same session, with no reconnect at all.

One email was handled under the old UIDVALIDITY, a second one (LATE) was still waiting for a
retry when the folder was renumbered: `reprocess_since_last` hands LATE over exactly once and
records the handled one `duplicate` (Message-ID); `skip_to_new` hands nothing over.
"""
from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from tenant_proc.handlers import jsonl
from tests.harness.faultlib import wait_until
from tests.imap.test_server_faults import last_heartbeat
from tests.process.test_tenant_process import jsonl_lines, make_spec, tenants  # noqa: F401 (fixture)
from tests.servers.imap.altserver import ServerUnavailable
from tests.servers.imap.courier import Courier
from tests.servers.imap.mail_helpers import make_message

RECONCILE = 2.0


def _renumber_dovecot(server: Any, old_uv: int) -> None:
    server._doveadm("mailbox", "update", "-u", "alice", "--uid-validity", str(old_uv + 1000), "INBOX")


def _renumber_courier(server: Any, old_uv: int) -> None:
    time.sleep(1.1)  # Courier's UIDVALIDITY is the time in seconds: a later one differs
    (server.mail_dir / "alice" / "Maildir" / "courierimapuiddb").unlink()
    # A read-write SELECT writes the new UID db: else every read-only look (STATUS, the
    # tenant's EXAMINE) is given a new UIDVALIDITY that Courier never stores.
    server._open_inboxes(["alice"])


@pytest.fixture(params=["dovecot", "courier"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Callable[[Any, int], None]]]:
    if request.param == "dovecot":
        yield request.getfixturevalue("dovecot"), _renumber_dovecot
        return
    try:
        instance = Courier(tmp_path / "courier", users={"alice": "alice-pw"})
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            raise  # CI installs the servers (scripts/test.sh): missing means broken
        pytest.skip(str(exc))
    with instance:
        yield instance, _renumber_courier


def late_fails_until_gate(email, context) -> None:
    """jsonl, except that an email whose subject has LATE fails until the gate file exists."""
    if "LATE" in (email.subject or "") and not Path(context.options["gate"]).exists():
        raise RuntimeError("not yet")
    jsonl(email, context)


def _rows(tmp_path: Path, query: str) -> list[tuple]:
    db = sqlite3.connect(tmp_path / "state" / "checkpoints.sqlite3")
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def _ledger(tmp_path: Path, uidvalidity: int) -> dict[int, str]:
    rows = _rows(tmp_path, f"SELECT uid, status FROM ledger WHERE uidvalidity = {int(uidvalidity)}")
    return dict(rows)


def _checkpoint(tmp_path: Path) -> tuple[int, int] | None:
    rows = _rows(tmp_path, "SELECT uidvalidity, last_uid FROM checkpoints WHERE tenant_id = 't-alice'")
    return rows[0] if rows else None


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["reprocess_since_last", "skip_to_new"])
def test_a_renumbered_folder_is_noticed_while_connected(server, tmp_path, tenants, mode):
    imap_server, renumber = server
    gate = tmp_path / "gate"
    spec = make_spec(imap_server, tmp_path, target=f"{__name__}:late_fails_until_gate",
                     options={"path": "emails.jsonl", "gate": str(gate)},
                     reconcile_interval=RECONCILE, retry_interval=3600.0, idle_timeout=600.0,
                     dead_after=600.0, on_uidvalidity_change=mode)
    tenant = tenants(spec)
    tenant.wait_state("idle")
    imap_server.deliver("alice", make_message("handled", message_id="<handled@uv>"))
    wait_until(lambda: len(jsonl_lines(tmp_path)) == 1, 15, "the first email")
    old_uv = jsonl_lines(tmp_path)[0]["uidvalidity"]
    imap_server.deliver("alice", make_message("LATE", message_id="<late@uv>"))
    wait_until(lambda: _ledger(tmp_path, old_uv).get(2) == "retrying", 15, "LATE waiting for its retry")
    assert _checkpoint(tmp_path) == (old_uv, 1)

    gate.touch()  # from now on LATE could be handled; its retry is an hour away
    reconnects = last_heartbeat(tenant)["counters"]["reconnects"]
    renumber(imap_server, old_uv)
    renumbered_at = time.monotonic()
    new_uv = imap_server.uidvalidity("alice")
    assert new_uv != old_uv
    # Noticed by the periodic reconcile (every RECONCILE s), not by anything the test does.
    wait_until(lambda: (_checkpoint(tmp_path) or (0,))[0] == new_uv, 10 * RECONCILE + 10,
               "the new UIDVALIDITY in the checkpoint", interval=0.2)
    noticed_after = time.monotonic() - renumbered_at
    print(f"{mode}: new UIDVALIDITY noticed {noticed_after:.1f}s after the change")

    if mode == "reprocess_since_last":
        wait_until(lambda: _ledger(tmp_path, new_uv) == {1: "duplicate", 2: "processed"}, 15,
                   "the handled email a duplicate, LATE processed")
        assert _checkpoint(tmp_path) == (new_uv, 2)
        expected = ["handled", "LATE"]
    else:
        assert _checkpoint(tmp_path) == (new_uv, 2)  # the new UIDNEXT - 1: nothing old
        expected = ["handled"]
    time.sleep(1.5)  # a second hand-over would show up now
    lines = jsonl_lines(tmp_path)
    assert [line["subject"] for line in lines] == expected
    assert all(line["uidvalidity"] == new_uv for line in lines[1:])

    # Mail arriving afterwards is handled under the new UIDVALIDITY, once.
    if isinstance(imap_server, Courier):  # resynchronised by STATUS, in the same session
        assert last_heartbeat(tenant)["counters"]["reconnects"] == reconnects
    imap_server.deliver("alice", make_message("after", message_id="<after@uv>"))
    wait_until(lambda: len(jsonl_lines(tmp_path)) == len(expected) + 1, 15, "the email after")
    last = jsonl_lines(tmp_path)[-1]
    assert (last["subject"], last["uidvalidity"], last["uid"]) == ("after", new_uv, 3)
    assert _ledger(tmp_path, new_uv)[3] == "processed"
