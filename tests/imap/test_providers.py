"""The core flows against servers that answer as Exchange Online and as Gmail (issue 21), through
tests/servers/proxies/providers.py in front of a real Dovecot: their greetings, CAPABILITY lists
and IDLE continuations, and, one mailbox at a time, their habits: new mail announced before the
IDLE continuation (Outlook), the same message appended twice (a Gmail label added again, a drag
out of the inbox and back). UIDs listed but not returned: tests/mail/test_missing_uids.py.
"""
from __future__ import annotations

import pytest

from tests.harness.faultlib import assert_exactly_once, wait_until
from tests.imap.test_server_faults import by_uid, last_heartbeat, proxied_tenant, wait_done
from tests.process.test_tenant_process import jsonl_lines, tenants  # noqa: F401 (fixture)
from tests.servers.imap.mail_helpers import make_message
from tests.servers.proxies.providers import MANNERS, ProviderProxy

pytestmark = pytest.mark.integration
MANNER_NAMES = sorted(MANNERS)
# Every command our client may send. Gmail advertises COMPRESS=DEFLATE, ENABLE, UTF8=ACCEPT,
# CONDSTORE, XLIST ... that the test Dovecot lacks (and Exchange lacks some Dovecot has): the
# client must never act on an advertised extension beyond IDLE and the AUTH= mechanisms.
PLAIN_IMAP4REV1 = {b"CAPABILITY", b"LOGIN", b"AUTHENTICATE", b"EXAMINE", b"SELECT", b"STATUS",
                   b"FETCH", b"SEARCH", b"IDLE", b"DONE", b"NOOP", b"LOGOUT"}


def subjects(tmp_path) -> list[str]:
    return [line["subject"] for line in jsonl_lines(tmp_path)]


@pytest.mark.parametrize("manner", MANNER_NAMES)
def test_core_flows_in_the_providers_manner(dovecot, tmp_path, tenants, manner):
    """IDLE delivery, catch-up after the server ended the session, clean logout."""
    with ProviderProxy((dovecot.host, dovecot.imap_port), manner) as proxy:
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy)
        dovecot.deliver("alice", make_message("while idling"))
        wait_until(lambda: subjects(tmp_path) == ["while idling"], 15, "IDLE delivery")

        dovecot.kick("alice")  # the server ends the session; mail arrives before we are back
        dovecot.deliver("alice", make_message("after the kick"))
        wait_until(lambda: subjects(tmp_path) == ["while idling", "after the kick"], 20,
                   "the catch-up after the kick")
        tenant.wait_state("idle")
        assert proxy.logins == 2

        assert tenant.stop() == 0
        assert proxy.commands[-1] == b"LOGOUT"  # DONE, then LOGOUT: a clean stop
        assert proxy.commands_used() <= PLAIN_IMAP4REV1, proxy.commands_used() - PLAIN_IMAP4REV1
        assert b"IDLE" in proxy.commands and b"CAPABILITY" in proxy.commands
    assert_exactly_once(jsonl_lines(tmp_path), {"t-alice": {"while idling", "after the kick"}})


@pytest.mark.parametrize("manner", MANNER_NAMES)
def test_new_mail_announced_before_the_idle_continuation_costs_no_reconnect(
        dovecot, tmp_path, tenants, manner):
    """Outlook's notification lags and comes out before `+ IDLE accepted` of the next IDLE
    (php-imap#258); imapclient's idle() called that an "Unexpected IDLE response" and every IDLE
    that met new mail cost a reconnect. Now: new mail, caught up on the same connection."""
    with ProviderProxy((dovecot.host, dovecot.imap_port), manner) as proxy:
        proxy.exists_before_continuation("alice")
        # IDLE re-issued every second (no catch-up of its own); no reconcile in sight.
        tenant = proxied_tenant(dovecot, tmp_path, tenants, proxy, idle_timeout=1.0,
                                reconcile_interval=600.0)
        for n in range(2):
            dovecot.deliver("alice", make_message(f"announced late {n}"))
            wait_until(lambda: len(subjects(tmp_path)) == n + 1, 20, f"email {n} handed over")
        tenant.wait_state("idle")
        assert proxy.logins == 1  # no reconnect
        assert last_heartbeat(tenant)["counters"].get("reconnects", 0) == 0
        assert subjects(tmp_path) == ["announced late 0", "announced late 1"]


@pytest.mark.parametrize("manner", MANNER_NAMES)
def test_the_same_message_appended_twice_is_handed_over_once_by_default(
        dovecot, tmp_path, tenants, manner):
    """Message-ID deduplication is on by default (7 days): the second copy is `duplicate`. Mail
    without a Message-ID (or with an empty `<>`) is never deduplicated."""
    same = make_message("label added again", message_id="<same@provider.example>")
    no_id = make_message("no id").replace(b"Message-ID:", b"X-Old-Message-ID:")
    empty_id = make_message("empty id", message_id="<x@y>").replace(b"<x@y>", b"<>")
    with ProviderProxy((dovecot.host, dovecot.imap_port), manner) as proxy:
        proxied_tenant(dovecot, tmp_path, tenants, proxy)  # no dedupe_window set: the default
        for message in (same, same, no_id, no_id, empty_id, empty_id):
            dovecot.deliver("alice", message)
        outcome = wait_done(tmp_path, [1, 2, 3, 4, 5, 6])
        assert [outcome[u][0] for u in range(1, 7)] == ["processed", "duplicate"] + ["processed"] * 4
        assert subjects(tmp_path) == ["label added again", "no id", "no id", "empty id", "empty id"]
        assert by_uid(tmp_path)[2][:2] == ("duplicate", 0)
