"""Reliability under faults (issue 4): each test injects one fault into the real product and
asserts what was processed, counted by (tenant, uidvalidity, uid): nothing lost, nothing twice.

The first part is pure (throttling backoff, TLS policy, a hypothesis property of the checkpoint
logic); the rest runs the real supervisor on a real Dovecot, every wait bounded. The measured
recovery times are printed (pytest -s) and summarised in README.md (Failure behaviour).
"""
from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import stat
import tempfile
import threading
import time
import traceback
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imapclient.exceptions import LoginError

from tenant_proc import errors
from tenant_proc import session as session_mod
from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.imap import connect
from tenant_proc.mail.mailbox import Mailbox, Notice
from tenant_proc.process.control import StopRequested
from tenant_proc.signin.login import login
from tenant_proc.spec import ImapSettings, Secret, StateSpec, TenantSpec
from tenant_proc.store.sqlite import SqliteStore
from tests.harness.faultlib import Appender, assert_exactly_once, maildir_deliver, write_spy
from tests.harness.supervisor_run import SupervisorRun, TenantEntry, process_gone_within
from tests.servers.imap.mail_helpers import make_message
from tests.servers.proxies.tcp_proxy import TcpProxy

integration = pytest.mark.integration


def spec_for(host: str = "imap.example.com", security: str = "tls", allow_insecure: bool = False,
             **imap: Any) -> TenantSpec:
    return TenantSpec(id="t", name="T", host=host, port=993, security=security,  # type: ignore[arg-type]
                      username="u", password=Secret("pw-not-shown"), allow_insecure=allow_insecure,
                      imap=ImapSettings(**imap))


# ---------------------------------------------------------------- throttling (pure)

THROTTLED = "Request is throttled. Suggested Backoff Time: 299910 milliseconds"


def test_suggested_backoff_is_parsed_from_exchange_throttling():
    assert errors.suggested_backoff(f"b'{THROTTLED}'") == pytest.approx(299.91)
    assert errors.suggested_backoff("BAD Request is throttled. Suggested Backoff Time: 92 ms") == 0.092
    assert errors.suggested_backoff("[UNAVAILABLE] try later") is None
    assert errors.suggested_backoff("Suggested Backoff Time: 99999999 milliseconds") == errors.MAX_SERVER_BACKOFF


def test_reconnect_delay_honours_the_server_and_jitters_otherwise():
    rng = random.Random(1)
    plain = [session_mod.reconnect_delay(4.0, OSError("reset"), rng) for _ in range(200)]
    assert 3.2 <= min(plain) and max(plain) <= 4.8 and len(set(plain)) > 100
    throttled = [session_mod.reconnect_delay(1.0, ConnectionLost(THROTTLED), rng) for _ in range(200)]
    assert min(throttled) >= 299.91  # never earlier than the server asked
    assert max(throttled) <= 299.91 * 1.2
    # a suggestion below our own backoff does not shorten it
    assert session_mod.reconnect_delay(60.0, ConnectionLost("Suggested Backoff Time: 5 ms"), rng) >= 48


class _FakeControl:
    def __init__(self) -> None:
        self.counters = Counter()
        self.last_error: str | None = None
        self.slept: list[float] = []
        self.state = "starting"

    def check(self) -> None:
        pass

    def set_state(self, state: str, mode: str | None = None) -> None:
        self.state = state

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if len(self.slept) >= 2:
            raise StopRequested("enough")

    def server_spoke(self) -> None:
        pass

    def heartbeat_if_due(self) -> None:
        pass

    def send(self, message: dict[str, Any]) -> None:
        pass

    send_soon = send

    def send_queued(self) -> None:
        pass


def test_session_backs_off_as_long_as_a_throttling_server_asks(monkeypatch):
    def throttled_open(spec: TenantSpec, keepalive: Any = None) -> Any:
        raise ConnectionLost(f"TLS handshake failed: {THROTTLED}")

    monkeypatch.setattr(session_mod, "open_client", throttled_open)
    control = _FakeControl()
    mailbox = type("NoMailbox", (), {"progress": 0})()
    session = session_mod.Session(spec_for(), control, mailbox=mailbox, log=_NullLog())  # type: ignore[arg-type]
    session.run()  # returns on the StopRequested raised by the second sleep
    assert all(d >= 299.91 for d in control.slept), control.slept
    assert "Suggested Backoff Time" in (control.last_error or "")
    assert control.counters["reconnects"] == 2


def test_throttled_login_is_a_retry_not_an_auth_failure():
    class Client:
        def __init__(self, message: str) -> None:
            self.message = message

        def login(self, user: str, password: str) -> None:
            raise LoginError(self.message)

    with pytest.raises(ConnectionLost, match="throttled"):
        login(Client(f"b'{THROTTLED}'"), spec_for())  # type: ignore[arg-type]
    with pytest.raises(FatalError) as info:
        login(Client("b'[AUTHENTICATIONFAILED] Authentication failed.'"), spec_for())  # type: ignore[arg-type]
    assert info.value.kind == "auth" and "pw-not-shown" not in str(info.value)
    # The server's words, not imaplib's bytes repr of them.
    assert str(info.value).endswith(": [AUTHENTICATIONFAILED] Authentication failed."), str(info.value)


class _NullLog:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


# ---------------------------------------------------------------- TLS policy (pure)

def test_plain_text_to_a_remote_host_is_refused_unless_allowed():
    with pytest.raises(FatalError) as info:
        connect.check_policy(spec_for(security="plain"))
    assert info.value.kind == "config" and "allow_insecure" in info.value.reason
    connect.check_policy(spec_for(security="plain", allow_insecure=True))
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.3"):
        connect.check_policy(spec_for(host=host, security="plain"))
    connect.check_policy(spec_for(security="starttls"))
    # open_client applies it before any connection is made (192.0.2.0/24 is TEST-NET: no route)
    started = time.monotonic()
    with pytest.raises(FatalError):
        connect.open_client(spec_for(host="192.0.2.10", security="plain"))
    assert time.monotonic() - started < 0.5


# ---------------------------------------------------------------- checkpoint property (pure)

class Crash(BaseException):
    """SIGKILL stand-in: not an Exception, so no handler-failure path can swallow it."""


class FakeImap:
    """The parts of IMAPClient the mailbox uses, over an in-memory folder."""

    def add(self, kind: str) -> int:
        uid = self.next_uid
        self.next_uid += 1
        self.messages[uid] = (f"Subject: {kind} {uid}\r\nMessage-ID: <{uid}.{self.uidvalidity}@x>\r\n"
                              f"\r\n{kind}\r\n").encode()
        return uid

    def renumber(self) -> None:
        """A UIDVALIDITY change: the same messages, new UIDs."""
        bodies = list(self.messages.values())
        self.uidvalidity += 1
        self.messages = {i + 1: b for i, b in enumerate(bodies)}
        self.next_uid = len(bodies) + 1

    def select_info(self) -> dict[bytes, Any]:
        return {b"UIDVALIDITY": self.uidvalidity, b"UIDNEXT": self.next_uid}

    normalise_times = True

    def __init__(self) -> None:
        self.uidvalidity = 1000
        self.messages: dict[int, bytes] = {}
        self.next_uid = 1
        self._imap = _FakeImaplib(self)

    def fetch_lines(self, uid_set: str, items: str) -> list[Any]:
        """`UID FETCH n:* (RFC822.SIZE)` or `UID FETCH n (BODY.PEEK[]<0.N> ...)` as imaplib
        hands back the untagged lines."""
        seqs = {u: i + 1 for i, u in enumerate(sorted(self.messages))}
        if uid_set.endswith(":*"):
            low = int(uid_set.split(":")[0])
            found = [u for u in sorted(self.messages) if u >= low]
            found = found or ([max(self.messages)] if self.messages else [])  # "n:*" semantics
            return [f"{seqs[u]} (UID {u} RFC822.SIZE {len(self.messages[u])})".encode() for u in found]
        uid, limit = int(uid_set), int(items.split("<0.")[1].split(">")[0])
        if uid not in self.messages:
            return []
        body = self.messages[uid]
        head = body[:limit]
        return [(f"{seqs[uid]} (UID {uid} RFC822.SIZE {len(body)} BODY[]<0> {{{len(head)}}}".encode(), head),
                b")"]

    def _checkok(self, command: str, typ: str, data: Any) -> None:
        assert typ == "OK"

    def fetch(self, uids: list[int], items: list[str]) -> dict[int, dict[bytes, Any]]:
        out = {}
        for uid in uids:
            if uid in self.messages:
                body = self.messages[uid]
                out[uid] = {b"RFC822.SIZE": len(body), b"BODY[]": body,
                            b"INTERNALDATE": datetime.now(timezone.utc)}
        return out


class _FakeImaplib:
    """The imaplib halves the mailbox sends its pipelined FETCHes with."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.pending: list[tuple[str, ...]] = []

    def _command(self, *args: str) -> str:
        assert args[:2] == ("UID", "FETCH"), args
        self.pending.append(args)
        return f"A{len(self.pending)}"

    def _command_complete(self, name: str, tag: str) -> tuple[str, list[bytes]]:
        return "OK", [b"done"]

    def _untagged_response(self, typ: str, data: Any, name: str) -> tuple[str, list[Any]]:
        lines = [line for args in self.pending for line in self.owner.fetch_lines(args[2], args[3])]
        self.pending = []
        return typ, lines


class PropertyWorld:
    """One tenant's mailbox logic driven against FakeImap and a real SQLite store."""

    MAX_ATTEMPTS = 3

    def __init__(self, directory: Path) -> None:
        self.db_path = directory / "checkpoints.sqlite3"
        self.imap = FakeImap()
        self.spec = TenantSpec(id="t", name="T", host="h", port=993, security="tls", username="u",
                               password=Secret("x"), imap=ImapSettings(max_attempts=self.MAX_ATTEMPTS,
                                                                       retry_interval=0.0, batch_size=3,
                                                                       on_uidvalidity_change="skip_to_new"),
                               state=StateSpec(state_dir=str(directory)))
        self.ok_calls: Counter[tuple[int, int]] = Counter()
        self.fail_calls: Counter[tuple[int, int]] = Counter()
        self.crash_after: Counter[tuple[int, int]] = Counter()
        self.crash_in: Counter[tuple[int, int]] = Counter()
        self.finished_seen: set[tuple[int, int]] = set()
        self.flaky_failed: set[tuple[int, int]] = set()
        self.crash_in_handler = False
        self.crash_before_mark = False
        self.interrupted: set[tuple[int, int]] = set()  # a crash hit while its handler ran
        self.last_checkpoint: tuple[int, int] | None = None
        self.store: SqliteStore | None = None
        self.start()

    # -- a tenant process ------------------------------------------------------------------

    def start(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = SqliteStore(self.db_path)
        world = self

        class Store(SqliteStore):
            def mark_done(self, tenant_id, folder, uidvalidity, uid, message_id, status, error=None):
                if status == "processed" and world.crash_before_mark:
                    world.crash_before_mark = False
                    world.crash_after[(uidvalidity, uid)] += 1
                    world.interrupted.add((uidvalidity, uid))
                    raise Crash("killed between handler return and mark_done")
                super().mark_done(tenant_id, folder, uidvalidity, uid, message_id, status, error)

            def finish_then_begin(self, tenant_id, folder, uidvalidity, finished, uid):
                # During a batch the processed row is written with the next UID's mark: a
                # crash before that joint commit leaves the finished email 'handling'.
                if world.crash_before_mark:
                    world.crash_before_mark = False
                    world.crash_after[(uidvalidity, finished[0])] += 1
                    world.interrupted.add((uidvalidity, finished[0]))
                    raise Crash("killed between handler return and the joint commit")
                return super().finish_then_begin(tenant_id, folder, uidvalidity, finished, uid)

        self.store.__class__ = Store
        self.mailbox = Mailbox(self.spec, self.store, self.handle, _FakeControl(), _NullLog())  # type: ignore[arg-type]
        self.reconnect()

    def reconnect(self) -> None:
        self.mailbox.sync_checkpoint(self.imap, self.imap.select_info())  # type: ignore[arg-type]
        self.check_checkpoint()

    def handle(self, email: Any) -> None:
        key = (email.uidvalidity, email.uid)
        checkpoint = self.store.load_checkpoint("t", "INBOX")
        assert checkpoint is not None
        # Never handle anything at or below the checkpoint, never anything already finished.
        assert checkpoint.uidvalidity != email.uidvalidity or email.uid > checkpoint.last_uid
        assert key not in self.finished_seen
        assert not self.store.is_done("t", "INBOX", *key)
        # Redelivered exactly when an earlier attempt was cut short by a crash.
        assert email.redelivered == (key in self.interrupted), (key, email.redelivered)
        self.interrupted.discard(key)
        if self.crash_in_handler:
            self.crash_in_handler = False
            self.interrupted.add(key)
            self.crash_in[key] += 1
            raise Crash("killed inside the handler")
        if email.subject.startswith("poison") or (email.subject.startswith("flaky")
                                                  and key not in self.flaky_failed):
            self.flaky_failed.add(key)
            self.fail_calls[key] += 1
            raise ValueError(f"cannot handle {key}")
        self.ok_calls[key] += 1

    def catch_up(self) -> None:
        try:
            self.mailbox.catch_up(self.imap, Notice.now())  # type: ignore[arg-type]
        except Crash:
            self.start()  # the supervisor restarts the process: reopen, resync
        self.check_checkpoint()

    # -- invariants ------------------------------------------------------------------------

    def ledger(self) -> dict[tuple[int, int], tuple[str, int]]:
        db = sqlite3.connect(self.db_path)
        try:
            rows = db.execute("SELECT uidvalidity, uid, status, attempts FROM ledger").fetchall()
        finally:
            db.close()
        return {(uv, uid): (status, attempts) for uv, uid, status, attempts in rows}

    def check_checkpoint(self) -> None:
        checkpoint = self.store.load_checkpoint("t", "INBOX")
        assert checkpoint is not None
        if self.last_checkpoint and self.last_checkpoint[0] == checkpoint.uidvalidity:
            assert checkpoint.last_uid >= self.last_checkpoint[1], "checkpoint went backwards"
        self.last_checkpoint = tuple(checkpoint)  # type: ignore[assignment]
        for key, (status, _) in self.ledger().items():
            if status in ("processed", "failed"):
                self.finished_seen.add(key)

    def check_final(self, expected_uids: set[int]) -> None:
        ledger = self.ledger()
        for key, n in self.ok_calls.items():
            assert n <= 1 + self.crash_after[key], f"{key} handled {n} times"
        for key, (status, attempts) in ledger.items():
            if status == "failed":
                # handler exceptions and process deaths while handling both count as attempts
                tries = self.fail_calls[key] + self.crash_in[key] + self.crash_after[key]
                assert attempts == self.MAX_ATTEMPTS == tries, (key, attempts, tries)
            if status == "processed":
                assert self.ok_calls[key] >= 1
        for key, n in self.fail_calls.items():
            assert n <= self.MAX_ATTEMPTS
        uv = self.imap.uidvalidity
        for uid in expected_uids:  # liveness: everything that arrived after the last resync
            assert ledger.get((uv, uid), ("missing",))[0] in ("processed", "failed"), (uv, uid)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("mail"), st.lists(st.sampled_from(["ok", "ok", "ok", "flaky", "poison"]),
                                             min_size=1, max_size=5)),
        st.just(("catch_up",)),
        st.just(("crash_in_handler",)),
        st.just(("crash_before_mark",)),
        st.just(("restart",)),
        st.just(("reconnect",)),
        st.just(("uidvalidity",)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_checkpoint_property_no_loss_no_repeat(ops: list[tuple[Any, ...]]):
    with tempfile.TemporaryDirectory() as tmp:
        world = PropertyWorld(Path(tmp))
        since_resync: set[int] = set()
        for op in ops:
            kind = op[0]
            if kind == "mail":
                since_resync |= {world.imap.add(k) for k in op[1]}
            elif kind == "catch_up":
                world.catch_up()
            elif kind == "crash_in_handler":
                world.crash_in_handler = True
            elif kind == "crash_before_mark":
                world.crash_before_mark = True
            elif kind == "restart":
                world.start()
            elif kind == "reconnect":
                world.reconnect()
            elif kind == "uidvalidity":
                # New UIDs for old mail: by design restart from UIDNEXT, the old ones are not redone.
                world.imap.renumber()
                since_resync = set()
                world.reconnect()
        world.crash_in_handler = world.crash_before_mark = False
        for _ in range(len(world.imap.messages) * PropertyWorld.MAX_ATTEMPTS + 2):
            world.catch_up()
        world.check_final(since_resync)
        world.store.close()


# ================================================================ the real product on Dovecot

def make_tenants(dovecot, count: int, prefix: str = "co") -> list[TenantEntry]:
    entries = []
    for i in range(count):
        user = f"{prefix}{i:02d}"
        dovecot.add_user(user, f"{user}-pw")
        entries.append(TenantEntry(user, user, f"{user}-pw", name=f"Company {i:02d}"))
    return entries


def all_idle(status: dict[str, Any], ids: list[str]) -> bool:
    return all(status["tenants"].get(t, {}).get("state") == "idle" for t in ids)


def reconnects(status: dict[str, Any]) -> dict[str, int]:
    return {tid: t.get("reconnects", 0) for tid, t in status["tenants"].items()}


@integration
@pytest.mark.slow
def test_chaos_random_sigkills_while_2000_emails_arrive(dovecot, tmp_path):
    tenants = make_tenants(dovecot, 20)
    users = [t.user for t in tenants]
    supervisor = {"restart_backoff": 0.5, "restart_jitter": 0.2, "max_restarts": 10_000,
                  "heartbeat_interval": 0.5}
    expected: dict[str, set[str]] = {u: set() for u in users}
    kills = 0
    with SupervisorRun(tmp_path, dovecot, tenants, supervisor=supervisor).start(timeout=40) as run:
        appender = Appender(dovecot, users)
        errors: list[BaseException] = []

        def append_share(share: list[str], per_user: int) -> None:
            try:
                for i in range(per_user):
                    for user in share:
                        subject = f"chaos {user} {i}"
                        appender.append(user, make_message(subject))
                        expected[user].add(subject)
                    time.sleep(0.12)  # ~2,000 emails over ~30 s
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=append_share, args=(users[k::4], 100)) for k in range(4)]
        started = time.monotonic()
        for t in threads:
            t.start()
        rng = random.Random(4)
        while any(t.is_alive() for t in threads):
            victims = run.live_children()
            if victims:
                try:
                    rng.choice(victims).send_signal(signal.SIGKILL)
                    kills += 1
                except psutil.NoSuchProcess:
                    pass
            time.sleep(rng.uniform(0.3, 0.9))
        for t in threads:
            t.join(60)
        appender.close()
        assert not errors, errors
        append_time = time.monotonic() - started
        total = sum(len(s) for s in expected.values())
        assert total == 2000
        run.wait_emails(total, timeout=60)
        drained = time.monotonic() - started - append_time
        time.sleep(1.5)  # anything processed twice would show up now
        assert_exactly_once(run.emails(), expected)
        assert len(run.emails()) == total
        status = run.wait_for(lambda s: all_idle(s, users), 20, "all idle after chaos")
        restarts = sum(t["restarts"] for t in status["tenants"].values())
    print(f"\nchaos: {total} emails in {append_time:.1f}s, {kills} SIGKILLs, {restarts} restarts, "
          f"backlog drained {drained:.1f}s after the last append")
    assert kills >= 20 and restarts >= kills * 0.8


@integration
def test_dovecot_restart_and_kick_all_tenants_recover_and_lose_nothing(dovecot, tmp_path):
    tenants = make_tenants(dovecot, 5)
    users = [t.user for t in tenants]
    expected: dict[str, set[str]] = {u: set() for u in users}
    with SupervisorRun(tmp_path, dovecot, tenants).start() as run:
        for user in users:  # every Maildir exists before the outage
            dovecot.deliver(user, make_message(f"before {user}"))
            expected[user].add(f"before {user}")
        run.wait_emails(5)
        # 1. doveadm kick: every session gets BYE
        base = reconnects(run.status())
        kicked_at = time.monotonic()
        for user in users:
            dovecot.kick(user)
        for user in users:
            dovecot.deliver(user, make_message(f"after kick {user}"))
            expected[user].add(f"after kick {user}")
        run.wait_for(lambda s: all_idle(s, users) and all(reconnects(s)[u] > base[u] for u in users),
                     20, "back in IDLE after kick")
        kick_recovery = time.monotonic() - kicked_at
        run.wait_emails(10, timeout=15)
        # 2. Dovecot down (mail still arrives: an MTA writes the Maildir), then up again
        base = reconnects(run.status())
        dovecot.stop()
        for user in users:
            for i in range(2):
                maildir_deliver(dovecot, user, make_message(f"during outage {user} {i}"))
                expected[user].add(f"during outage {user} {i}")
        time.sleep(2)
        dovecot.start()
        up_at = time.monotonic()
        run.wait_for(lambda s: all_idle(s, users) and all(reconnects(s)[u] > base[u] for u in users),
                     30, "back in IDLE after the restart")
        restart_recovery = time.monotonic() - up_at
        run.wait_emails(20, timeout=15)
        time.sleep(1)
        assert_exactly_once(run.emails(), expected)
        assert len(run.emails()) == 20
        assert sorted(dovecot.who()) == users
        assert all(t["restarts"] == 0 for t in run.status()["tenants"].values())  # in-process
    print(f"\nkick: all idle again in {kick_recovery:.1f}s; Dovecot restart: all idle "
          f"{restart_recovery:.1f}s after it was back")


@integration
def test_black_hole_is_detected_within_dead_after_and_mail_meanwhile_processed(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    dead_after, command_timeout = 3.0, 2.0
    with TcpProxy((dovecot.host, dovecot.imaps_port)) as proxy:
        entry = TenantEntry("acme", "acme", "acme-pw", port=proxy.port)
        imap = {"dead_after": dead_after, "command_timeout": command_timeout, "connect_timeout": 2,
                "reconnect_backoff_max": 2}
        with SupervisorRun(tmp_path, dovecot, [entry], imap=imap).start() as run:
            dovecot.deliver("acme", make_message("before"))
            run.wait_emails(1)
            run.wait_for(lambda s: s["tenants"]["acme"]["state"] == "idle", 5, "idle")
            time.sleep(1.0)
            holed_at = time.monotonic()
            proxy.blackhole()  # nothing flows, nothing closes: TCP looks healthy
            dovecot.deliver("acme", make_message("sent into the black hole"))
            run.wait_for(lambda s: s["tenants"]["acme"]["reconnects"] >= 1, dead_after + command_timeout + 5,
                         "the tenant noticing the dead connection")
            detected = time.monotonic() - holed_at
            # new connections through the proxy hang too, for a while; then it forwards again
            time.sleep(2.5)
            proxy.resume()
            resumed_at = time.monotonic()
            emails = run.wait_emails(2, timeout=15)
            recovered = time.monotonic() - resumed_at
            status = run.wait_for(lambda s: s["tenants"]["acme"]["state"] == "idle", 10, "idle again")
            assert [e["subject"] for e in emails] == ["before", "sent into the black hole"]
            assert status["tenants"]["acme"]["restarts"] == 0  # found and fixed in-process
            time.sleep(1)
            assert len(run.emails()) == 2
    print(f"\nblack hole: detected after {detected:.1f}s (dead_after {dead_after:g}s + probe "
          f"{command_timeout:g}s), mail processed {recovered:.1f}s after the path came back")
    assert detected <= dead_after + command_timeout + 1.5


def login_attempts(dovecot, user: str) -> int:
    """Failed logins Dovecot logged for user (one line per connection, with its attempt count)."""
    import re

    text = dovecot.log_path.read_text(errors="replace")
    return sum(int(n) for n in re.findall(rf"auth failed, (\d+) attempts.*user=<{user}>", text))


@integration
def test_wrong_password_fails_once_then_sighup_after_the_fix_brings_it_up(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    dovecot.add_user("lockcfg", "right-cfg-pw")
    dovecot.add_user("locksrv", "right-srv-pw")
    # each wrong-password tenant on its own address: Dovecot slows all logins from an IP after one fails
    bad_cfg = TenantEntry("lockcfg", "lockcfg", "WRONG-cfg-pw", host="127.0.0.3", via_env=False)
    bad_srv = TenantEntry("locksrv", "locksrv", "WRONG-srv-pw", host="127.0.0.4")
    far_plain = TenantEntry("farplain", "acme", "acme-pw", host="192.0.2.10", security="plain", port=143)
    tenants = [TenantEntry("acme", "acme", "acme-pw"), bad_cfg, bad_srv, far_plain]
    with SupervisorRun(tmp_path, dovecot, tenants, supervisor={"restart_backoff": 0.5}).start() as run:
        started = time.monotonic()
        status = run.wait_for(lambda s: all(s["tenants"][t]["state"] == "failed"
                                            for t in ("lockcfg", "locksrv", "farplain")), 20, "failed")
        for tid in ("lockcfg", "locksrv"):
            error = status["tenants"][tid]["last_error"]
            assert error.startswith("auth: login failed for") and "AUTHENTICATIONFAILED" in error, error
            assert "b'" not in error, error
            assert status["tenants"][tid]["retry_in"] > 800  # the long backoff, not restart_backoff
        assert "refusing plain-text IMAP to non-loopback host 192.0.2.10" in status["tenants"]["farplain"]["last_error"]
        time.sleep(max(0.0, 10 - (time.monotonic() - started)))
        assert login_attempts(dovecot, "lockcfg") == 1 and login_attempts(dovecot, "locksrv") == 1
        assert run.tenant("lockcfg")["restarts"] == 0 and run.tenant("acme")["state"] == "idle"
        # fix one in the config (a changed row), the other on the server (an unchanged row)
        bad_cfg.password = "right-cfg-pw"
        run.write_config()
        dovecot.add_user("locksrv", "WRONG-srv-pw")
        hup_at = time.monotonic()
        run.signal(signal.SIGHUP)
        run.wait_for(lambda s: all_idle(s, ["lockcfg", "locksrv", "acme"]), 15, "idle after the fix")
        fixed_in = time.monotonic() - hup_at
        for user in ("lockcfg", "locksrv"):
            dovecot.deliver(user, make_message(f"hello {user}"))
        emails = run.wait_emails(2, timeout=10)
        assert sorted(e["tenant_id"] for e in emails) == ["lockcfg", "locksrv"]
        assert run.tenant("farplain")["state"] == "failed"
        assert run.tenant("acme")["restarts"] == 0
    print(f"\nwrong password: 1 login attempt in 10 s each; idle {fixed_in:.1f}s after SIGHUP")


@integration
def test_supervisor_sigkill_children_follow_and_a_new_supervisor_resumes(dovecot, tmp_path):
    tenants = make_tenants(dovecot, 3)
    users = [t.user for t in tenants]
    expected: dict[str, set[str]] = {u: {f"first {u}"} for u in users}
    run = SupervisorRun(tmp_path, dovecot, tenants)
    with run.start():
        for user in users:
            dovecot.deliver(user, make_message(f"first {user}"))
        run.wait_emails(3)
        pids = list(run.child_pids().values())
        run.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        run.proc.wait(5)
        survivors = process_gone_within(pids, 2.0)
        gone_in = time.monotonic() - killed_at
        assert survivors == [], f"tenant processes outlived the supervisor by 2 s: {survivors}"
    for user in users:  # nothing runs now
        for i in range(2):
            dovecot.deliver(user, make_message(f"while down {user} {i}"))
            expected[user].add(f"while down {user} {i}")
    again = SupervisorRun(tmp_path, dovecot, tenants)  # same workdir: same state_dir and jsonl
    with again.start(wait_running=False):
        resumed_at = time.monotonic()
        again.wait_for(lambda s: s["supervisor"].get("pid") == again.proc.pid and all_idle(s, users),
                       20, "the new supervisor's tenants idle")
        again.wait_emails(9, timeout=15)
        caught_up = time.monotonic() - resumed_at
        time.sleep(1)
        assert_exactly_once(again.emails(), expected)
        assert len(again.emails()) == 9
    print(f"\nsupervisor SIGKILL: children gone in {gone_in:.2f}s; the new supervisor processed the "
          f"missed mail {caught_up:.1f}s after starting")


SECRETS = {"good": "Good-Secret-pw-3f9a1c", "bad": "Bad-Secret-pw-8e2d7b",
           "unreach": "Unreach-Secret-pw-5c4e0a", "supabase": "sb-service-role-SECRET-9d8c7b6a"}


@integration
def test_secrets_never_leak(dovecot, tmp_path):
    dovecot.add_user("good", SECRETS["good"])
    dovecot.add_user("bad", "the-real-password")
    dovecot.add_user("unreach", SECRETS["unreach"])
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    tenants = [TenantEntry("good", "good", SECRETS["good"]),
               TenantEntry("bad", "bad", SECRETS["bad"], host="127.0.0.3"),
               TenantEntry("unreach", "unreach", SECRETS["unreach"], port=closed_port, via_env=False)]
    spy_file = tmp_path / "ipc-frames.jsonl"
    spy_dir = write_spy(tmp_path / "spy")
    run = SupervisorRun(tmp_path / "run", dovecot, tenants, imap={"reconnect_backoff_max": 1})
    run.extra_env = {"SUPABASE_SERVICE_ROLE_KEY": SECRETS["supabase"], "IPC_SPY_FILE": str(spy_file),
                     "PYTHONPATH": f"{spy_dir}{os.pathsep}{Path(__file__).resolve().parents[2]}"}
    with run.start(wait_running=False):
        run.wait_for(lambda s: s["tenants"]["good"]["state"] == "idle"
                     and s["tenants"]["bad"]["state"] == "failed"
                     and s["tenants"]["unreach"]["reconnects"] >= 2, 20, "good idle, bad failed, unreach retrying")
        dovecot.deliver("good", make_message("secret test"))
        run.wait_emails(1)
        places: dict[str, bytes] = {
            "supervisor log": run.log_path.read_bytes(),
            "status.json": (run.state_dir / "status.json").read_bytes(),
            "status": run.cli("status").stdout.encode(),
            "status --json": run.cli("status", "--json").stdout.encode(),
            "jsonl": run.jsonl_path.read_bytes(),
            "checkpoints": (run.state_dir / "checkpoints.sqlite3").read_bytes(),
        }
        children = run.live_children()
        assert len(children) == 2  # good (idle) and unreach (reconnecting in-process)
        for child in children:
            places[f"cmdline {child.pid}"] = Path(f"/proc/{child.pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{child.pid}/environ").read_bytes()
            places[f"environ {child.pid}"] = environ
            assert b"PW_GOOD" not in environ  # setproctitle blanked it, not just our values
        assert spy_file.exists(), "the IPC spy recorded nothing"
        frames = spy_file.read_bytes()
        assert frames.count(b'"type":"heartbeat"') > 3 and b'"type":"fatal"' in frames
        places["ipc frames"] = frames
        assert "cannot connect" in run.tenant("unreach")["last_error"]
    places["supervisor log (after stop)"] = run.log_path.read_bytes()
    # exception text of the errors a wrong password or a dead server raise
    for exc in _connect_errors(dovecot, closed_port):
        places[f"exception {type(exc).__name__}"] = "".join(
            traceback.format_exception(exc)).encode() + repr(exc).encode()
    for where, data in places.items():
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} secret found in {where}"
    assert len(places) >= 12


def _connect_errors(dovecot, closed_port: int) -> list[BaseException]:
    errors: list[BaseException] = []
    wrong = TenantSpec(id="bad", name="Bad", host="127.0.0.3", port=dovecot.imaps_port, security="tls",
                       username="bad", password=Secret(SECRETS["bad"]), ca_file=str(dovecot.ca_file),
                       imap=ImapSettings(connect_timeout=5, command_timeout=5))
    client = connect.open_client(wrong)
    try:
        login(client, wrong)
    except FatalError as exc:
        errors.append(exc)
    finally:
        client.shutdown()
    dead = TenantSpec(id="u", name="U", host="127.0.0.1", port=closed_port, security="tls",
                      username="unreach", password=Secret(SECRETS["unreach"]),
                      imap=ImapSettings(connect_timeout=2, command_timeout=2))
    try:
        connect.open_client(dead)
    except ConnectionLost as exc:
        errors.append(exc)
    assert [type(e) for e in errors] == [FatalError, ConnectionLost]
    return errors


@integration
def test_state_dir_files_are_private(dovecot, tmp_path):
    tenants = make_tenants(dovecot, 2)
    with SupervisorRun(tmp_path, dovecot, tenants).start() as run:
        for t in tenants:
            dovecot.deliver(t.user, make_message("x"))
        run.wait_emails(2)
        names = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.state_dir.iterdir()}
        assert stat.S_IMODE(run.state_dir.stat().st_mode) == 0o700
        for name in ("status.json", "checkpoints.sqlite3", "checkpoints.sqlite3-wal",
                     "checkpoints.sqlite3-shm", "supervisor.pid"):
            assert names.get(name) == 0o600, (name, oct(names.get(name) or 0), names)
        assert all(mode & 0o077 == 0 for mode in names.values()), {n: oct(m) for n, m in names.items()}
        assert stat.S_IMODE(run.jsonl_path.stat().st_mode) == 0o600


@integration
def test_sigkill_after_the_handler_before_the_ledger_is_not_a_duplicate(dovecot, tmp_path):
    """The one window a crash can hit: the handler's effect is done, mark_done never ran.

    The email comes back after the restart marked `redelivered`, and the jsonl handler does not
    write a line it already wrote."""
    dovecot.add_user("acme", "acme-pw")
    handler = {"target": "tests.harness.fault_handlers:jsonl_then_die", "path": str(tmp_path / "emails.jsonl"),
               "die_after": ["victim"], "marker_dir": str(tmp_path / "markers")}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")], handler=handler,
                       supervisor={"restart_backoff": 0.5}).start() as run:
        dovecot.deliver("acme", make_message("victim"))
        dovecot.deliver("acme", make_message("after it"))
        run.wait_for(lambda s: s["tenants"]["acme"]["restarts"] == 1
                     and s["tenants"]["acme"]["state"] == "idle"
                     and s["tenants"]["acme"]["processed"] >= 1, 15, "restart after the kill")
        run.wait_emails(2)
        time.sleep(1)
        assert_exactly_once(run.emails(), {"acme": {"victim", "after it"}})
        assert len(run.emails()) == 2
        assert "redelivered" in run.log_text()


@integration
def test_an_email_that_kills_its_process_is_given_up_after_max_attempts(dovecot, tmp_path):
    """A poison email that crashes the process (not an exception) must not block the mailbox:
    each death while handling it counts as an attempt, and after max_attempts it is `failed`."""
    dovecot.add_user("acme", "acme-pw")
    handler = {"target": "tests.harness.fault_handlers:die_on_killer", "path": str(tmp_path / "emails.jsonl")}
    supervisor = {"restart_backoff": 0.3, "restart_jitter": 0.0, "max_restarts": 10}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")], handler=handler,
                       supervisor=supervisor, imap={"max_attempts": 3}).start() as run:
        dovecot.deliver("acme", make_message("KILLER email"))
        dovecot.deliver("acme", make_message("after the killer"))
        status = run.wait_for(lambda s: s["tenants"]["acme"]["failed"] == 1
                              and s["tenants"]["acme"]["processed"] == 1, 20, "killer given up")
        assert [e["subject"] for e in run.emails()] == ["after the killer"]
        assert status["tenants"]["acme"]["restarts"] == 3  # three deaths = three attempts
        assert status["tenants"]["acme"]["state"] == "idle"
        assert "gave up on uid 1" in run.log_text() and "died while handling" in run.log_text()
