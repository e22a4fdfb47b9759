"""Server misbehaviour (issue 12, items 1-5): one test per fault, each through the
fault-injecting proxy (tests/servers/proxies/fault_proxy.py) in front of a real Dovecot, asserting how many
logins it cost, what the ledger recorded for the victim, and that every other email was
handled exactly once.

Three emails go in; UID 2 is the victim. The measured numbers are printed (pytest -s) and
summarised in README.md (Failure behaviour).
"""
from __future__ import annotations

import dataclasses
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tenant_proc.errors import ConnectionLost
from tenant_proc.imap import connect
from tenant_proc.spec import ImapSettings, Secret, TenantSpec
from tests.harness.faultlib import assert_exactly_once, wait_until
from tests.process.test_tenant_process import Tenant, jsonl_lines, make_spec, tenants  # noqa: F401 (fixture)
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message
from tests.servers.proxies.fault_proxy import FaultProxy

integration = pytest.mark.integration
SUBJECTS = ["first", "victim", "third"]
VICTIM = 2
DONE = ("processed", "failed", "expunged", "duplicate")


def ledger(tmp_path: Path) -> dict[tuple[int, int], tuple[str, int, str | None]]:
    db = sqlite3.connect(tmp_path / "state" / "checkpoints.sqlite3")
    try:
        rows = db.execute("SELECT uidvalidity, uid, status, attempts, error FROM ledger").fetchall()
    finally:
        db.close()
    return {(uv, uid): (status, attempts, error) for uv, uid, status, attempts, error in rows}


def by_uid(tmp_path: Path) -> dict[int, tuple[str, int, str | None]]:
    return {uid: row for (_, uid), row in ledger(tmp_path).items()}


def proxied_tenant(dovecot: Dovecot, tmp_path: Path, start: Callable[[TenantSpec], Tenant],
                   proxy: FaultProxy, **imap: Any) -> Tenant:
    settings: dict[str, Any] = dict(max_attempts=3, retry_interval=0.2, reconnect_backoff_max=1.0)
    settings.update(imap)
    spec = make_spec(dovecot, tmp_path, security="plain", **settings)
    tenant = start(dataclasses.replace(spec, port=proxy.port))
    tenant.wait_state("idle")
    return tenant


def deliver_all(dovecot: Dovecot, subjects: list[str] = SUBJECTS) -> None:
    for subject in subjects:
        dovecot.deliver("alice", make_message(subject, message_id=f"<{subject}@faults>"))


def wait_done(tmp_path: Path, uids: list[int], timeout: float = 30.0) -> dict[int, tuple[str, int, str | None]]:
    wait_until(lambda: all(by_uid(tmp_path).get(u, ("",))[0] in DONE for u in uids), timeout,
               f"ledger outcomes for UIDs {uids}", interval=0.2)
    time.sleep(0.5)  # anything handled twice would show up now
    return by_uid(tmp_path)


def others_exactly_once(tmp_path: Path, victim_handled: bool = False) -> None:
    lines = jsonl_lines(tmp_path)
    expected = set(SUBJECTS) - (set() if victim_handled else {"victim"})
    assert_exactly_once(lines, {"t-alice": expected})
    assert {line["subject"] for line in lines} == expected


def last_heartbeat(tenant: Tenant) -> dict[str, Any]:
    tenant.drain()
    return [m for m in tenant.messages if m["type"] == "heartbeat"][-1]


# ------------------------------------------------------------- 1. a FETCH the server refuses

@integration
@pytest.mark.parametrize("answer", ["NO", "BAD"])
def test_refused_fetch_counts_as_an_attempt_and_ends_failed(dovecot, tmp_path, tenants, answer):
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy)
        proxy.refuse_fetch(VICTIM, answer)
        deliver_all(dovecot)
        outcome = wait_done(tmp_path, [1, 2, 3])
        assert outcome[VICTIM][:2] == ("failed", 3)
        assert "refused the FETCH" in (outcome[VICTIM][2] or "")
        assert outcome[1][0] == outcome[3][0] == "processed"
        others_exactly_once(tmp_path)
        assert proxy.logins == 1  # a refusal is not a reconnect
        assert last_heartbeat(tenant)["counters"]["failed"] == 1
    print(f"\nrefused FETCH ({answer}): failed after 3 attempts, {proxy.logins} login")


@integration
def test_unparseable_fetch_answer_counts_as_an_attempt(dovecot, tmp_path, tenants):
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        proxied_tenant(dovecot, tmp_path, tenants, proxy)
        proxy.garble_fetch(VICTIM)
        deliver_all(dovecot)
        outcome = wait_done(tmp_path, [1, 2, 3])
        assert outcome[VICTIM][:2] == ("failed", 3)
        others_exactly_once(tmp_path)
        assert proxy.logins == 1
    print(f"\ngarbled FETCH answer: failed after 3 attempts, {proxy.logins} login")


@integration
def test_answer_that_breaks_the_session_is_bounded_and_attributed(dovecot, tmp_path, tenants):
    """A line no client can read: the session is lost on every FETCH of the victim. Each loss
    counts as its attempt (the survey's prefetch is dropped once it broke a session)."""
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy, reconnect_backoff_max=0.5)
        proxy.junk_fetch(VICTIM)
        deliver_all(dovecot)
        outcome = wait_done(tmp_path, [1, 2, 3], timeout=40)
        assert outcome[VICTIM][:2] == ("failed", 3)
        others_exactly_once(tmp_path)
        tenant.wait_state("idle")
        logins = proxy.logins
        assert logins <= 1 + 3 + 1, logins  # first login, one per broken attempt, one spare
    print(f"\nsession-breaking FETCH answer: failed after 3 attempts, {logins} logins")


@integration
def test_backoff_grows_while_no_catch_up_makes_progress(dovecot, tmp_path, tenants):
    """A server that accepts every LOGIN and breaks every session: the reconnect backoff is not
    reset by LOGIN + SELECT, so logins thin out (1 s, 2 s, 4 s ...) instead of one a second."""
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        proxied_tenant(dovecot, tmp_path, tenants, proxy, max_attempts=1000, retry_interval=0.0,
                       reconnect_backoff_max=60.0)
        proxy.junk_fetch(VICTIM)
        deliver_all(dovecot, SUBJECTS[:2])
        wait_until(lambda: proxy.logins >= 2, 20, "the first reconnect")
        first = time.monotonic()
        time.sleep(6.5)
        logins = proxy.logins
    # 1 + 2 + 4 s of backoff fit in 6.5 s: at most 3 more logins (about 7 with a reset each time)
    assert logins <= 2 + 3, logins
    print(f"\nno progress: {logins} logins in {time.monotonic() - first + 1:.0f}s")


@integration
def test_logins_per_hour_stay_within_the_budget(dovecot, tmp_path, tenants):
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy, max_attempts=1000, retry_interval=0.0,
                                reconnect_backoff_max=0.2, max_logins_per_hour=3)
        proxy.junk_fetch(VICTIM)
        deliver_all(dovecot, SUBJECTS[:2])
        beat = tenant.wait_for(lambda m: m["type"] == "heartbeat"
                               and "login budget" in (m.get("last_error") or ""), timeout=20)
        time.sleep(3)
        assert proxy.logins == 3
        assert beat["state"] == "backoff"
        assert tenant.stop() == 0
    print(f"\nlogin budget 3/h: {proxy.logins} logins, then waiting")


@integration
def test_throttled_fetch_waits_as_asked_and_counts_no_attempt(dovecot, tmp_path, tenants):
    """Each throttle puts the whole mailbox in backoff, off-line, for the time the server asked
    (issue 21 item 3; tests/imap/test_provider_refusals.py has the providers' other answers)."""
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        proxied_tenant(dovecot, tmp_path, tenants, proxy)
        proxy.throttle_fetch(VICTIM, 1500, times=3)  # the prefetch, then two body FETCHes
        deliver_all(dovecot)
        outcome = wait_done(tmp_path, [1, 2, 3])
        assert outcome[VICTIM][:2] == ("processed", 0)  # throttling is not the email's fault
        others_exactly_once(tmp_path, victim_handled=True)
        assert proxy.logins == 1 + 3  # one login after each throttle's wait
        gaps = [b - a for a, b in zip(proxy.login_times[1:], proxy.login_times[2:])]
        assert min(gaps) >= 1.5, gaps
    print(f"\nthrottled FETCH: processed after the asked-for waits, {proxy.logins} logins")


# ------------------------------------------------------------- 2. an answer without what was asked

@integration
def test_answer_without_body_is_a_failed_attempt_never_an_empty_email(dovecot, tmp_path, tenants):
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        proxied_tenant(dovecot, tmp_path, tenants, proxy)
        proxy.drop_body(VICTIM)
        deliver_all(dovecot)
        outcome = wait_done(tmp_path, [1, 2, 3])
        assert outcome[VICTIM][:2] == ("failed", 3)
        assert "without BODY[]" in (outcome[VICTIM][2] or "")
        others_exactly_once(tmp_path)
        assert proxy.logins == 1


@integration
@pytest.mark.parametrize("expunged", [True, False])
def test_uid_missing_from_the_answer_is_confirmed_with_search(dovecot, tmp_path, tenants, expunged):
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        proxied_tenant(dovecot, tmp_path, tenants, proxy, reconcile_interval=0.5,
                       missing_uid_timeout=1.5)
        proxy.drop_uid(VICTIM, expunged=expunged)
        deliver_all(dovecot)
        outcome = wait_done(tmp_path, [1, 2, 3])
        if expunged:
            assert outcome[VICTIM][:2] == ("expunged", 0)
        else:  # the server still lists it: asked for again until missing_uid_timeout, no attempt
            # counted against it meanwhile (issue 21: tests/mail/test_missing_uids.py)
            assert outcome[VICTIM][:2] == ("failed", 0)
            assert "never returned it in a FETCH" in (outcome[VICTIM][2] or "")
        others_exactly_once(tmp_path)
        assert proxy.logins == 1


# ------------------------------------------------------------- 3. slow but healthy

@integration
def test_heartbeats_continue_while_a_fetch_answer_trickles_in(dovecot, tmp_path, tenants):
    """The body arrives 2,000 bytes every 0.1 s (~4 s): the child keeps beating from the read
    path instead of going silent for the whole FETCH."""
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy, command_timeout=5)
        proxy.trickle_fetch(1, chunk=2000, delay=0.1, times=1)
        tenant.drain()
        seen = len(tenant.messages)
        # larger than the survey's 64 KB prefetch: fetched (and trickled) on its own
        dovecot.deliver("alice", make_message("slow", body="x" * 80_000))
        beats: list[float] = []
        deadline = time.monotonic() + 40
        while not jsonl_lines(tmp_path) and time.monotonic() < deadline:
            tenant.drain(0.02)
            beats += [time.monotonic() for m in tenant.messages[seen:] if m["type"] == "heartbeat"]
            seen = len(tenant.messages)
        assert [line["subject"] for line in jsonl_lines(tmp_path)] == ["slow"]
        assert proxy.fetches_hit == 1 and len(beats) >= 3
        gaps = [b - a for a, b in zip(beats, beats[1:])]
        assert max(gaps) < 2.5, gaps  # heartbeat_interval is 0.2 s; the read took ~4 s
    print(f"\ntrickled FETCH: {len(beats)} heartbeats, longest gap {max(gaps):.2f}s")


def test_dns_lookup_is_bounded_by_connect_timeout(monkeypatch):
    real = socket.getaddrinfo
    released = threading.Event()

    def slow_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.example":
            released.wait(10)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    spec = TenantSpec(id="t", name="T", host="slow-dns.example", port=993, security="tls",
                      username="u", password=Secret("x"), imap=ImapSettings(connect_timeout=0.5))
    beats: list[float] = []
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionLost, match="DNS lookup of slow-dns.example took longer"):
            connect.open_client(spec, keepalive=lambda: beats.append(time.monotonic()))
        assert time.monotonic() - started < 5  # not the resolver's 10 s
        assert beats  # the tenant beat while it waited
    finally:
        released.set()


# ------------------------------------------------------------- 4. UIDVALIDITY changes

def set_uidvalidity(dovecot: Dovecot, value: int) -> None:
    dovecot._doveadm("mailbox", "update", "-u", "alice", "--uid-validity", str(value), "INBOX")


@integration
def test_uidvalidity_change_reprocesses_unhandled_mail_without_duplicates(dovecot, tmp_path, tenants):
    spec = make_spec(dovecot, tmp_path, retry_interval=0.2)
    first = tenants(spec)
    first.wait_state("idle")
    dovecot.deliver("alice", make_message("handled before", message_id="<before@uv>"))
    wait_until(lambda: len(jsonl_lines(tmp_path)) == 1, 15, "the first email")
    assert first.stop() == 0
    for subject in ("while down 1", "while down 2"):
        dovecot.deliver("alice", make_message(subject, message_id=f"<{subject.replace(' ', '-')}@uv>"))
    old_uv = jsonl_lines(tmp_path)[0]["uidvalidity"]
    set_uidvalidity(dovecot, old_uv + 1000)
    second = tenants(spec)
    second.wait_state("idle")
    wait_until(lambda: len(jsonl_lines(tmp_path)) >= 3, 15, "the mail that arrived meanwhile")
    time.sleep(0.5)
    lines = jsonl_lines(tmp_path)
    assert [l["subject"] for l in lines] == ["handled before", "while down 1", "while down 2"]
    assert {l["uidvalidity"] for l in lines[1:]} == {old_uv + 1000}
    statuses = {uid: row[0] for (uv, uid), row in ledger(tmp_path).items() if uv == old_uv + 1000}
    assert statuses == {1: "duplicate", 2: "processed", 3: "processed"}


class _RenumberedClient:
    """A server that renumbered the folder and says so only when asked (STATUS, EXAMINE)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def folder_status(self, folder: str, items: list[bytes]) -> dict[bytes, int]:
        self.asked.append(f"STATUS {folder} {b' '.join(items).decode()}")
        return {b"UIDVALIDITY": 9, b"UIDNEXT": 5}

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, int]:
        self.asked.append(f"EXAMINE {folder}")
        return {b"UIDVALIDITY": 9, b"UIDNEXT": 5}


def test_reconcile_notices_a_uidvalidity_change_while_connected(tmp_path):
    """Dovecot ends a renumbered session itself ("IMAP session state is inconsistent"); other
    servers may not: the reconcile asks STATUS and resynchronises without a reconnect."""
    from tenant_proc.mail.mailbox import Mailbox
    from tenant_proc.session.loop import Session
    from tenant_proc.store.sqlite import SqliteStore
    from tests.imap.test_throttle_and_policy import _FakeControl, _NullLog

    spec = TenantSpec(id="t", name="T", host="h", port=993, security="tls", username="u",
                      password=Secret("x"), imap=ImapSettings())
    mailbox = Mailbox(spec, SqliteStore(tmp_path / "c.sqlite3"), print, _FakeControl(), _NullLog())  # type: ignore[arg-type]
    client = _RenumberedClient()
    mailbox.sync_checkpoint(client, {b"UIDVALIDITY": 7, b"UIDNEXT": 3})  # type: ignore[arg-type]
    session = Session(spec, _FakeControl(), mailbox, _NullLog())  # type: ignore[arg-type]
    session.client = client  # type: ignore[assignment]
    session._check_uidvalidity()
    assert client.asked == ["STATUS INBOX UIDVALIDITY UIDNEXT", "EXAMINE INBOX"]
    assert tuple(mailbox.checkpoint) == (9, 4)


# ------------------------------------------------------------- 5. the same email under a new UID

@integration
def test_dedupe_window_records_a_reuploaded_email_as_duplicate(dovecot, tmp_path, tenants):
    tenant = tenants(make_spec(dovecot, tmp_path, dedupe_window=3600.0))
    tenant.wait_state("idle")
    for subject in ("original", "re-upload", "other"):
        message_id = "<other@dup>" if subject == "other" else "<same@dup>"
        dovecot.deliver("alice", make_message(subject, message_id=message_id))
    outcome = wait_done(tmp_path, [1, 2, 3])
    assert [outcome[u][0] for u in (1, 2, 3)] == ["processed", "duplicate", "processed"]
    assert [l["subject"] for l in jsonl_lines(tmp_path)] == ["original", "other"]
