"""Transient sign-in refusals (issue 21 item 2): what Gmail and Exchange answer a login they
cannot serve right now is `backoff` with the server's words, never `failed`; Exchange's
"authenticated but not connected" becomes `failed` with its remedy only once it persists.

The integration tests run a real tenant process against Dovecot through the fault proxy
(tests/servers/proxies/fault_proxy.py), which answers as the provider does, with its exact
words (docs: /work/shared/DESIGN-NOTES.md §6; MailKit#377, php-imap#464, imapflow#314).
"""
from __future__ import annotations

import dataclasses
import imaplib
from pathlib import Path
from typing import Any

import pytest
from imapclient.exceptions import LoginError

from ipc import protocol
from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.signin.login import login
from tenant_proc.spec import Secret, TenantSpec
from tests.harness.faultlib import wait_until
from tests.process.test_tenant_process import Tenant, jsonl_lines, make_spec, tenants  # noqa: F401 (fixture)
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message
from tests.servers.oauth.idp import IdentityProvider
from tests.servers.proxies.fault_proxy import FaultProxy
from tests.signin.test_signin import MAILBOX, oauth_spec

GMAIL_CAP = "NO [ALERT] Too many simultaneous connections. (Failure)"
EXCHANGE_UNAVAILABLE = "NO Server Unavailable. 15"
EXCHANGE_BYE = "* BYE Connection closed. 14"
NOT_CONNECTED = "BAD User is authenticated but not connected."


# ---------------------------------------------------------------- which refusal is which (pure)

class _RefusingClient:
    """LOGIN answered as a server would; `bye`: the connection ended in the middle instead."""

    def __init__(self, text: str, bye: bool = False) -> None:
        self.text, self.bye = text, bye

    def login(self, user: str, password: str) -> None:
        try:
            if self.bye:
                raise imaplib.IMAP4.abort(f"command: LOGIN => {self.text}")
            raise imaplib.IMAP4.error(repr(self.text.encode()))
        except imaplib.IMAP4.error as exc:  # as imapclient wraps it
            raise LoginError(str(exc))


def _spec() -> TenantSpec:
    return TenantSpec(id="t", name="T", host="imap.example.com", port=993, security="tls",
                      username="u", password=Secret("pw-not-shown"))


@pytest.mark.parametrize("text", [
    "[ALERT] Too many simultaneous connections. (Failure)",  # Gmail, the 16th connection
    "Server Unavailable. 15",  # Exchange in an incident
    "[UNAVAILABLE] Maximum number of connections from user+IP exceeded",  # Dovecot (node-imap#606)
])
def test_a_login_refused_for_the_servers_state_is_a_retry(text: str) -> None:
    with pytest.raises(ConnectionLost, match="login temporarily refused") as info:
        login(_RefusingClient(text), _spec())  # type: ignore[arg-type]
    assert not isinstance(info.value, FatalError) and text in str(info.value)


def test_a_bye_during_login_is_a_retry_and_wrong_credentials_stay_fatal() -> None:
    with pytest.raises(ConnectionLost, match="login interrupted: .*System Error"):
        login(_RefusingClient("System Error", bye=True), _spec())  # type: ignore[arg-type]
    for text in ("[AUTHENTICATIONFAILED] Invalid credentials (Failure)",  # Gmail
                 "LOGIN failed.",  # Exchange
                 "[AUTHENTICATIONFAILED] Too many simultaneous connections"):  # credentials win
        with pytest.raises(FatalError) as info:
            login(_RefusingClient(text), _spec())  # type: ignore[arg-type]
        assert info.value.kind == "auth" and "pw-not-shown" not in str(info.value)


def test_not_connected_persists_after_three_logins_over_two_minutes() -> None:
    from tenant_proc.signin.refusals import NotConnectedStreak  # here: the file runs on older code too

    now = [0.0]
    streak = NotConnectedStreak(clock=lambda: now[0])
    for t in (0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 119.0):  # the reconnect backoff's pace
        now[0] = t
        assert not streak.refused(), t  # many logins, but within two minutes: it may pass
    now[0] = 121.0
    assert streak.refused()
    streak.connected()  # a login that opened the mailbox: it was passing after all
    now[0] = 500.0
    assert not streak.refused()
    now[0] = 900.0
    assert not streak.refused()  # two logins over minutes are not three
    now[0] = 901.0
    assert streak.refused()


# ---------------------------------------------------------------- against the provider's answers

def _proxied(dovecot: Dovecot, tmp_path: Path, proxy: FaultProxy, **imap: Any) -> TenantSpec:
    settings: dict[str, Any] = dict(reconnect_backoff_max=0.5)
    settings.update(imap)
    return dataclasses.replace(make_spec(dovecot, tmp_path, security="plain", **settings), port=proxy.port)


def _backoff_with(tenant: Tenant, words: str) -> dict[str, Any]:
    return tenant.wait_for(lambda m: m["type"] == "heartbeat" and m["state"] == "backoff"
                           and words in (m.get("last_error") or ""), timeout=20)


@pytest.mark.integration
@pytest.mark.parametrize("answer, words", [
    (GMAIL_CAP, "Too many simultaneous connections"),
    (EXCHANGE_UNAVAILABLE, "Server Unavailable. 15"),
    (EXCHANGE_BYE, "Connection closed. 14"),
])
def test_transient_login_refusals_back_off_and_recover(dovecot, tmp_path, tenants, answer, words):
    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:
        proxy.script("LOGIN", answer, times=2)
        tenant = tenants(_proxied(dovecot, tmp_path, proxy))
        _backoff_with(tenant, words)
        tenant.wait_state("idle", timeout=20)
        dovecot.deliver("alice", make_message("after the refusals"))
        wait_until(lambda: len(jsonl_lines(tmp_path)) == 1, 20, "the email")
        assert proxy.logins == 3 and proxy.scripts_hit == 2
        assert tenant.proc.is_alive()  # never `failed` (exit 4), not even for a moment
        assert not [m for m in tenant.messages if m["type"] == "fatal"]


def _oauth_tenant(oauth_dovecot: Dovecot, idp: IdentityProvider, tmp_path: Path, proxy: FaultProxy,
                  **imap: Any) -> TenantSpec:
    idp.add_app("app-1", "app-secret", mailbox=MAILBOX)
    table = {"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "app-1",
             "client_secret": "app-secret", "token_url": idp.microsoft_token_url()}
    spec = _proxied(oauth_dovecot, tmp_path, proxy, **imap)
    return dataclasses.replace(spec, username=MAILBOX, password=Secret(""), auth="xoauth2",
                               oauth=oauth_spec(table))


@pytest.mark.integration
@pytest.mark.parametrize("command, answer, times, words", [
    # Where Exchange sends it: AUTHENTICATE succeeds, EXAMINE is answered BAD (MailKit#1494).
    ("SELECT", NOT_CONNECTED, 1, "User is authenticated but not connected"),
    ("LOGIN", GMAIL_CAP, 2, "Too many simultaneous connections"),  # the retry with a new token too
    ("LOGIN", EXCHANGE_BYE, 1, "BYE Connection closed. 14"),
])
def test_oauth_sign_in_refusals_that_pass_are_backoff_then_idle(idp, oauth_dovecot, tmp_path, tenants,
                                                                command, answer, times, words):
    with FaultProxy((oauth_dovecot.host, oauth_dovecot.imap_port)) as proxy:
        proxy.script(command, answer, times=times)
        tenant = tenants(_oauth_tenant(oauth_dovecot, idp, tmp_path, proxy))
        _backoff_with(tenant, words)
        tenant.wait_state("idle", timeout=20)
        oauth_dovecot.deliver(MAILBOX, make_message("after the refusal"))
        wait_until(lambda: len(jsonl_lines(tmp_path)) == 1, 20, "the email")
        assert proxy.scripts_hit == times and tenant.proc.is_alive()
        assert not [m for m in tenant.messages if m["type"] == "fatal"]


@pytest.mark.integration
def test_not_connected_that_persists_fails_with_the_remedy(idp, oauth_dovecot, tmp_path, tenants, monkeypatch):
    """Every EXAMINE refused: `failed` with today's hint, but only after 3 logins spread over
    PERSISTENT_SPAN (2 minutes; 2 s here, set before the tenant process is forked)."""
    from tenant_proc.signin import refusals

    monkeypatch.setattr(refusals, "PERSISTENT_SPAN", 2.0)
    with FaultProxy((oauth_dovecot.host, oauth_dovecot.imap_port)) as proxy:
        proxy.script("SELECT", NOT_CONNECTED)
        tenant = tenants(_oauth_tenant(oauth_dovecot, idp, tmp_path, proxy))
        fatal = tenant.wait_for(lambda m: m["type"] == "fatal", timeout=30)
        tenant.proc.join(10)
        assert tenant.proc.exitcode == protocol.EXIT_AUTH
        assert fatal["kind"] == "auth" and "Add-MailboxPermission" in fatal["reason"]
        assert proxy.logins >= 3, proxy.logins
        assert proxy.login_times[-1] - proxy.login_times[0] >= 2.0
