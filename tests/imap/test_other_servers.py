"""The core paths on servers other than Dovecot: Cyrus IMAP 3.6 and Courier IMAP 5.0.

The real supervisor (tests/harness/supervisor_run.py) against each server from the private root
(scripts/other-imap-servers.sh): IDLE delivery, reconnect after the server ends the session,
a server restart, and a clean LOGOUT on SIGTERM. Locally without the private root these skip;
in CI (CI set) a server that cannot run is a failure, never a skip.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.harness.faultlib import assert_exactly_once
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.altserver import ServerUnavailable
from tests.servers.imap.courier import Courier, gamin_running
from tests.servers.imap.cyrus import Cyrus
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "alice-pw"
TENANT = "acme"
IDLE_DELIVERY_WITHIN = 10.0  # seconds: both servers push within about a second; the machine is shared
SERVERS: dict[str, Callable[..., Any]] = {"cyrus": Cyrus, "courier": Courier}


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    try:
        instance = SERVERS[request.param](tmp_path / request.param, users={USER: PASSWORD})
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            raise  # CI installs the servers (scripts/test.sh): missing means broken
        pytest.skip(str(exc))
    with instance:
        yield instance


def supervisor_for(server: Any, tmp_path: Path, **kwargs: Any) -> SupervisorRun:
    tenant = TenantEntry(TENANT, USER, PASSWORD, host=server.host, port=server.imaps_port,
                         ca_file=str(server.ca_file))
    return SupervisorRun(tmp_path / "run", server, [tenant], **kwargs)


def state(run: SupervisorRun) -> dict[str, Any]:
    return run.tenant(TENANT)


def wait_subjects(run: SupervisorRun, subjects: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subjects <= {e["subject"] for e in run.emails()}:
            return
        time.sleep(0.05)
    got = sorted(e["subject"] for e in run.emails())
    raise AssertionError(f"missing {sorted(subjects - set(got))} after {timeout}s (got {got}):\n"
                         f"{run.log_text()[-3000:]}")


def settle_and_check(run: SupervisorRun, subjects: set[str]) -> None:
    """Anything handled twice would show within a second or two; then exactly-once holds."""
    time.sleep(1.5)
    assert_exactly_once(run.emails(), {TENANT: subjects})
    assert len(run.emails()) == len(subjects)


def test_idle_delivery_handles_an_appended_email_once(server, tmp_path):
    with supervisor_for(server, tmp_path).start() as run:
        assert state(run)["state"] == "idle"  # both advertise IDLE: push, not polling
        server.append(USER, PASSWORD, make_message("pushed"))
        wait_subjects(run, {"pushed"}, IDLE_DELIVERY_WITHIN)
        settle_and_check(run, {"pushed"})
        assert state(run)["reconnects"] == 0
    if isinstance(server, Courier):
        # Courier's IDLE is real time only through gamin; without it, it checks every 60 s
        # and the bound above would not hold. Name the cause if that ever changes.
        assert gamin_running(), "Courier IDLE without gam_server: it polls"


def test_reconnect_after_the_server_ends_the_session(server, tmp_path):
    with supervisor_for(server, tmp_path).start() as run:
        server.append(USER, PASSWORD, make_message("before"))
        wait_subjects(run, {"before"}, IDLE_DELIVERY_WITHIN)
        child = state(run)["pid"]
        assert server.who() == [USER]
        server.kick(USER)
        server.append(USER, PASSWORD, make_message("meanwhile"))  # while the tenant reconnects
        run.wait_for(lambda s: s["tenants"][TENANT]["reconnects"] >= 1
                     and s["tenants"][TENANT]["state"] == "idle", 30, "back in IDLE after the kick")
        server.append(USER, PASSWORD, make_message("after"))
        wait_subjects(run, {"before", "meanwhile", "after"}, IDLE_DELIVERY_WITHIN)
        settle_and_check(run, {"before", "meanwhile", "after"})
        tenant = state(run)
        assert tenant["pid"] == child and tenant["restarts"] == 0  # reconnected in-process


def test_server_restart_tenant_comes_back_and_nothing_is_lost(server, tmp_path):
    with supervisor_for(server, tmp_path).start() as run:
        server.append(USER, PASSWORD, make_message("before"))
        wait_subjects(run, {"before"}, IDLE_DELIVERY_WITHIN)
        uidvalidity = server.uidvalidity(USER)
        base = state(run)["reconnects"]
        server.restart()
        server.append(USER, PASSWORD, make_message("while away"))  # before the tenant is back
        run.wait_for(lambda s: s["tenants"][TENANT]["reconnects"] > base
                     and s["tenants"][TENANT]["state"] == "idle", 30, "back in IDLE after the restart")
        server.append(USER, PASSWORD, make_message("after"))
        wait_subjects(run, {"before", "while away", "after"}, IDLE_DELIVERY_WITHIN)
        assert server.uidvalidity(USER) == uidvalidity, "the server changed UIDVALIDITY on restart"
        settle_and_check(run, {"before", "while away", "after"})
        assert state(run)["restarts"] == 0
        assert server.who() == [USER]


def test_sigterm_logs_out_and_leaves_no_session(server, tmp_path):
    run = supervisor_for(server, tmp_path)
    with run.start():
        server.append(USER, PASSWORD, make_message("one"))
        wait_subjects(run, {"one"}, IDLE_DELIVERY_WITHIN)
        assert server.who() == [USER]
        run.signal(signal.SIGTERM)
        assert run.proc is not None
        assert run.proc.wait(20) == 0
    deadline = time.monotonic() + 10
    while server.who() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.who() == []
    assert_logged_out(server)


def assert_logged_out(server: Any) -> None:
    """The server saw LOGOUT, not a dropped connection."""
    if isinstance(server, Courier):
        text = server.stdout_path.read_text(errors="replace")
        assert f"LOGOUT, user={USER}" in text, text[-2000:]
        assert f"DISCONNECTED, user={USER}" not in text, text[-2000:]


def test_courier_brand_new_mailbox_whose_uidvalidity_changes_loses_nothing(tmp_path):
    """A Maildir never opened read-write: Courier gives the tenant's EXAMINE a UIDVALIDITY it
    never stores, and the first APPEND creates a new one. The default on_uidvalidity_change
    (reprocess_since_last, deduplicated by Message-ID) must hand over what arrived meanwhile
    exactly once, where skipping to the new UIDNEXT lost it."""
    try:
        instance = Courier(tmp_path / "courier", users={USER: PASSWORD}, open_inboxes=False)
    except ServerUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    with instance as server, supervisor_for(server, tmp_path).start() as run:  # the default policy
        time.sleep(1.1)  # Courier's UIDVALIDITY is the time in seconds: a later one differs
        server.append(USER, PASSWORD, make_message("first"))
        wait_subjects(run, {"first"}, IDLE_DELIVERY_WITHIN)
        base = state(run)["reconnects"]
        server.kick(USER)
        server.append(USER, PASSWORD, make_message("meanwhile"))
        run.wait_for(lambda s: s["tenants"][TENANT]["reconnects"] > base, 30, "reconnected")
        wait_subjects(run, {"first", "meanwhile"}, 20)
        settle_and_check(run, {"first", "meanwhile"})
        # The case itself happened (Courier replaced the UIDVALIDITY under the tenant):
        assert "UIDVALIDITY of INBOX changed" in run.log_text(), run.log_text()[-2000:]
