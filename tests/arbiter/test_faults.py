"""Reliability under faults (issue 4): each test injects one fault into the real product and
asserts what was processed, counted by (tenant, uidvalidity, uid): nothing lost, nothing twice.

The real supervisor on a real Dovecot, every wait bounded. The measured recovery times are printed
(pytest -s) and summarised in README.md (Failure behaviour). The pure tests beside these are in
tests/imap/test_throttle_and_policy.py (throttling backoff, TLS policy) and
tests/mail/test_checkpoint_property.py (a hypothesis property of the checkpoint logic); secrets and
file modes under the same faults in test_secrets_and_permissions.py.
"""
from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

import psutil
import pytest

from tests.harness.faultlib import Appender, assert_exactly_once, maildir_deliver
from tests.harness.supervisor_run import SupervisorRun, TenantEntry, process_gone_within
from tests.servers.imap.mail_helpers import make_message
from tests.servers.proxies.tcp_proxy import TcpProxy

integration = pytest.mark.integration


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
