"""A UIDVALIDITY change while the tenant stays connected (issue 12 item 4), with a real Dovecot.

The tenant idles; the folder is renumbered on the server (`doveadm mailbox update
--uid-validity`); the test forces no reconnect. What Dovecot does to the selected session
(checked on 2.3.19): nothing by itself while it idles, and a STATUS from that session still
answers the old UIDVALIDITY; the next command that makes it look at the mailbox (the
reconcile's catch-up) gets `* BYE IMAP session state is inconsistent, please relogin.`. So the
periodic reconcile (every `reconcile_interval`) is what makes the tenant notice, by STATUS on
servers that answer it fresh, by that BYE and a reconnect on Dovecot; either way the new
UIDVALIDITY is applied as `on_uidvalidity_change` says.

One email was handled under the old UIDVALIDITY, a second one (LATE) was still waiting for a
retry when the folder was renumbered: `reprocess_since_last` hands LATE over exactly once and
records the handled one `duplicate` (Message-ID); `skip_to_new` hands nothing over.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tenant_proc.handlers import jsonl
from tests.dovecot import make_message
from tests.faultlib import wait_until
from tests.test_tenant_process import jsonl_lines, make_spec, tenants  # noqa: F401 (fixture)

RECONCILE = 2.0


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
def test_a_renumbered_folder_is_noticed_while_connected(dovecot, tmp_path, tenants, mode):
    gate = tmp_path / "gate"
    spec = make_spec(dovecot, tmp_path, target=f"{__name__}:late_fails_until_gate",
                     options={"path": "emails.jsonl", "gate": str(gate)},
                     reconcile_interval=RECONCILE, retry_interval=3600.0, idle_timeout=600.0,
                     dead_after=600.0, on_uidvalidity_change=mode)
    tenant = tenants(spec)
    tenant.wait_state("idle")
    dovecot.deliver("alice", make_message("handled", message_id="<handled@uv>"))
    wait_until(lambda: len(jsonl_lines(tmp_path)) == 1, 15, "the first email")
    old_uv = jsonl_lines(tmp_path)[0]["uidvalidity"]
    dovecot.deliver("alice", make_message("LATE", message_id="<late@uv>"))
    wait_until(lambda: _ledger(tmp_path, old_uv).get(2) == "retrying", 15, "LATE waiting for its retry")
    assert _checkpoint(tmp_path) == (old_uv, 1)

    gate.touch()  # from now on LATE could be handled; its retry is an hour away
    new_uv = old_uv + 1000
    dovecot._doveadm("mailbox", "update", "-u", "alice", "--uid-validity", str(new_uv), "INBOX")
    renumbered_at = time.monotonic()
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
    dovecot.deliver("alice", make_message("after", message_id="<after@uv>"))
    wait_until(lambda: len(jsonl_lines(tmp_path)) == len(expected) + 1, 15, "the email after")
    last = jsonl_lines(tmp_path)[-1]
    assert (last["subject"], last["uidvalidity"], last["uid"]) == ("after", new_uv, 3)
    assert _ledger(tmp_path, new_uv)[3] == "processed"
