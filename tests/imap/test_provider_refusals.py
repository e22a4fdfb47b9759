"""Refusals of the whole mailbox as Gmail and Exchange send them (issue 21 items 3, 4 and 8),
each through the fault proxy (tests/servers/proxies/fault_proxy.py) answering with the
provider's exact words in front of a real Dovecot.

3. A quota or incident answer to FETCH is nobody's attempt: the mailbox waits in `backoff`
   and the email is handed over once the server serves it again.
4. Exchange's throttle followed by `* BYE Connection closed. 14`: the asked-for time is waited
   even when the BYE came before the next answer of the pipelined survey.
8. A catch-up that finds nothing does not reset the reconnect backoff.
"""
from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tenant_proc.errors import MAX_SERVER_BACKOFF
from tenant_proc.spec import ImapSettings
from tests.harness.faultlib import wait_until
from tests.imap.test_server_faults import (VICTIM, by_uid, deliver_all, others_exactly_once,
                                          proxied_tenant, wait_done)
from tests.process.test_tenant_process import Tenant, jsonl_lines, tenants  # noqa: F401 (fixture)
from tests.servers.imap.mail_helpers import make_message
from tests.servers.proxies.fault_proxy import FaultProxy

integration = pytest.mark.integration

OVERQUOTA = "NO [OVERQUOTA] Account exceeded command or bandwidth limits."  # Gmail, download quota
SYSTEM_ERROR = "NO System Error (Failure)"  # Gmail in an incident (OfflineIMAP#682)
BYE_SYSTEM_ERROR = "* BYE System Error"  # Gmail in an incident (node-imap#593)
SERVER_UNAVAILABLE = "NO Server Unavailable. 15"  # Exchange (imapfilter#146)
THROTTLED = "NO Request is throttled. Suggested Backoff Time: {} milliseconds"  # Exchange
CLOSED = "Connection closed. 14"  # Exchange's BYE right after a throttle (imap_tools#135)


def backoff_beat(tenant: Tenant, words: str, timeout: float = 30) -> dict[str, Any]:
    return tenant.wait_for(lambda m: m["type"] == "heartbeat" and m["state"] == "backoff"
                           and words in (m.get("last_error") or ""), timeout)


# ------------------------------------------------------------- 3. mailbox-wide refusals

@integration
@pytest.mark.parametrize("answer, words, lasting", [
    (OVERQUOTA, "[OVERQUOTA]", {"seconds": 4}),
    (SYSTEM_ERROR, "System Error", {"times": 6}),
    (BYE_SYSTEM_ERROR, "BYE System Error", {"times": 5}),
    (SERVER_UNAVAILABLE, "Server Unavailable. 15", {"times": 6}),
])
def test_a_mailbox_wide_refusal_is_backoff_and_charges_no_attempt(dovecot, tmp_path, tenants,
                                                                   answer, words, lasting):
    """More refusals than max_attempts (3) allows: before, the victim ended `failed` for the
    server's trouble; now the mailbox waits in `backoff` and the victim is processed with no
    attempt counted once the server serves it."""
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy)
        proxy.script("FETCH", answer, uid=VICTIM, **lasting)
        deliver_all(dovecot)
        outcome = wait_done(tmp_path, [1, 2, 3], timeout=60)
        assert outcome[VICTIM][:2] == ("processed", 0), outcome[VICTIM]
        others_exactly_once(tmp_path, victim_handled=True)
        tenant.drain()
        beats = [m for m in tenant.messages if m["type"] == "heartbeat" and m["state"] == "backoff"]
        assert any(words in (m.get("last_error") or "") for m in beats), beats[-1:]
        assert all(m["counters"].get("failed", 0) == 0 for m in beats)
        assert proxy.scripts_hit >= 2 and proxy.logins >= 2  # the mailbox waited off-line
        tenant.wait_state("idle")
    print(f"\n{answer}: processed with 0 attempts after {proxy.scripts_hit} refusals, "
          f"{proxy.logins} logins")


def test_a_busy_server_without_a_time_waits_longer_each_time_up_to_15_minutes():
    from tenant_proc.errors import ServerBusy
    from tenant_proc.session.timing import busy_wait, reconnect_delay

    waits, wait = [], None
    for _ in range(8):
        wait = busy_wait(wait, 30.0)
        waits.append(wait)
    assert waits == [30, 60, 120, 240, 480, 900, 900, 900] and MAX_SERVER_BACKOFF == 900
    rng = random.Random(3)
    delays = [reconnect_delay(1.0, ServerBusy("NO System Error (Failure)"), rng, busy=240.0) for _ in range(50)]
    assert min(delays) >= 240.0 and max(delays) <= 288.0  # never earlier than decided
    asked = ServerBusy("NO Request is throttled. Suggested Backoff Time: 5000 milliseconds")
    assert 5.0 <= reconnect_delay(1.0, asked, rng) <= 6.0  # the server's time wins


# ------------------------------------------------------------- 4. throttle, then BYE

@integration
@pytest.mark.parametrize("command", ["SURVEY", "FETCH"])
def test_a_throttle_followed_by_bye_is_waited_for(dovecot, tmp_path, tenants, command):
    """SURVEY: the size FETCH is throttled and the BYE cuts the prefetch's answer; FETCH: the
    prefetch of the new email is throttled, and the BYE ends the connection."""
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy)
        rule = proxy.script(command, THROTTLED.format(3000), bye=CLOSED, times=1,
                            **({"uid": 1} if command == "FETCH" else {}))
        dovecot.deliver("alice", make_message("throttled", message_id="<throttled@faults>"))
        backoff_beat(tenant, "Suggested Backoff Time: 3000 milliseconds")
        wait_until(lambda: len(jsonl_lines(tmp_path)) == 1, 30, "the throttled email")
        gap = proxy.login_times[-1] - rule.fired[0]
        assert gap >= 3.0, f"logged in again {gap:.2f}s after the throttle"
        assert len(proxy.login_times) == 2
        assert by_uid(tmp_path)[1][:2] == ("processed", 0)
    print(f"\nthrottle on {command} then BYE: next login {gap:.1f}s later (asked 3 s)")


# ------------------------------------------------------------- 8. an empty catch-up

@integration
def test_an_empty_catch_up_does_not_reset_the_backoff(dovecot, tmp_path, tenants):
    """Every IDLE answered with BYE: each session logs in, finds nothing new, and breaks. The
    backoff must keep doubling (1, 2, 4 s) instead of one login a second."""
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        proxied_tenant(dovecot, tmp_path, tenants, proxy, reconnect_backoff_max=60.0)
        proxy.script("IDLE", f"* BYE {CLOSED}")
        dovecot.kick("alice")
        wait_until(lambda: proxy.logins >= 2, 20, "the first reconnect")
        first = proxy.login_times[1]
        time.sleep(6.5)
        logins = [t for t in proxy.login_times if t >= first]
    # 1 + 2 + 4 s of backoff: at most 3 logins in these 6.5 s (about 7 with a reset each time)
    assert len(logins) <= 3, [round(t - first, 1) for t in logins]
    print(f"\nempty catch-ups: {len(logins)} logins in 6.5 s")


def test_the_backoff_starts_afresh_after_an_email_or_a_long_idle():
    from tenant_proc.session.timing import backoff_earned

    imap = ImapSettings(reconnect_backoff_max=60.0)
    assert backoff_earned(True, 0.0, imap)  # an email handled on that session
    assert backoff_earned(False, 61.0, imap)  # in IDLE for longer than the longest backoff
    assert not backoff_earned(False, 0.5, imap)  # broken right after an empty catch-up
