"""Exchange throttling and the TLS policy, pure (issue 4): a throttling server's suggested
backoff is honoured by the reconnect delay, the session and the login; plain text to a remote host
is refused before any connection is made.

_FakeControl and _NullLog, stand-ins for a tenant's control channel and log, are used by
tests/mail/test_checkpoint_property.py and tests/imap/test_server_faults.py too.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest
from imapclient.exceptions import LoginError

from tenant_proc import errors
from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.imap import connect
from tenant_proc.process.control import StopRequested
from tenant_proc.session import loop as session_mod
from tenant_proc.session.timing import reconnect_delay
from tenant_proc.signin.login import login
from tenant_proc.spec import ImapSettings, Secret, TenantSpec


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
    plain = [reconnect_delay(4.0, OSError("reset"), rng) for _ in range(200)]
    assert 3.2 <= min(plain) and max(plain) <= 4.8 and len(set(plain)) > 100
    throttled = [reconnect_delay(1.0, ConnectionLost(THROTTLED), rng) for _ in range(200)]
    assert min(throttled) >= 299.91  # never earlier than the server asked
    assert max(throttled) <= 299.91 * 1.2
    # a suggestion below our own backoff does not shorten it
    assert reconnect_delay(60.0, ConnectionLost("Suggested Backoff Time: 5 ms"), rng) >= 48


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
