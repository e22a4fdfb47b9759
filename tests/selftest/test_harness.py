"""Proof that the Dovecot/cert test harness does what other tests rely on."""

from __future__ import annotations

import email
import imaplib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from imapclient import IMAPClient

from tests.servers.certs import CertPaths
from tests.servers.imap.dovecot import Dovecot
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass (never forever)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def tls_greeting(host: str, port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            return tls.recv(256)


def instance_processes(instance_name: str) -> list[psutil.Process]:
    """Processes whose title names this instance (every Dovecot child has it)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if instance_name in cmdline and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


# --------------------------------------------------------------------------- lifecycle

def test_start_stop_restart_are_bounded(tmp_path: Path, certs: CertPaths) -> None:
    server = Dovecot(tmp_path, users={"alice": "pw"})
    t0 = time.monotonic()
    server.start(timeout=10)
    assert server.running and time.monotonic() - t0 < 10

    t0 = time.monotonic()
    server.stop(timeout=10)
    assert not server.running and time.monotonic() - t0 < 10
    server.stop()  # idempotent

    server.restart()  # from stopped: just starts, on the same ports
    try:
        assert server.uidnext("alice") == 1
    finally:
        server.stop()


def test_stop_leaves_no_process_of_the_instance(tmp_path: Path) -> None:
    with Dovecot(tmp_path, users={"alice": "pw"}) as server:
        server.uidnext("alice")  # spawn login + imap processes too
        pids = server.pids
        assert len(pids) >= 4  # master, log, config, anvil, auth, ...
        assert instance_processes(server.instance_name)
    assert not any(psutil.pid_exists(pid) and _not_zombie(pid) for pid in pids)
    assert instance_processes(server.instance_name) == []


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_private_tmp_path_does_not_lock_dovecot_out(tmp_path: Path) -> None:
    # Every pytest session resets /tmp/pytest-of-<user> to 0700; as root that
    # must not cut Dovecot's unprivileged processes off from passwd and mail.
    with Dovecot(tmp_path / "dc", users={"alice": "pw"}) as server:
        tmp_path.chmod(0o700)
        server.deliver("alice", make_message("still reachable"))
        assert server.uidnext("alice") == 2


def test_bad_config_fails_fast_with_dovecot_n_output(tmp_path: Path) -> None:
    server = Dovecot(tmp_path, users={"alice": "pw"})
    server._render_conf = lambda: "this is { not a config\n"  # type: ignore[method-assign]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="dovecot -n"):
        server.start(timeout=5)
    assert time.monotonic() - t0 < 6
    assert not server.running


# --------------------------------------------------------------------------- TLS

def test_imaps_verifies_with_private_ca_only(dovecot: Dovecot) -> None:
    trusting = ssl.create_default_context(cafile=str(dovecot.ca_file))
    assert tls_greeting(dovecot.host, dovecot.imaps_port, trusting).startswith(b"* OK")
    # Hostname check against an IP SAN, as a tenant configured with 127.0.0.1 does.
    with socket.create_connection((dovecot.host, dovecot.imaps_port), timeout=5) as sock:
        with trusting.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            assert tls.recv(256).startswith(b"* OK")

    with pytest.raises(ssl.SSLCertVerificationError):
        tls_greeting(dovecot.host, dovecot.imaps_port, ssl.create_default_context())


def test_untrusted_cert_fails_even_with_the_ca(tmp_path: Path) -> None:
    with Dovecot(tmp_path, trusted_cert=False) as server:
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_greeting(server.host, server.imaps_port, ctx)


# --------------------------------------------------------------------------- mail helpers

def test_make_message_is_valid_rfc5322() -> None:
    raw = make_message("Subject here", body="line1\nline2", extra_headers={"X-Test": "1"})
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw)
    for header in ("From", "To", "Subject", "Date", "Message-ID", "X-Test"):
        assert msg[header], header
    assert make_message("a", message_id="<x@y>").count(b"Message-ID: <x@y>") == 1


def test_deliver_advances_uidnext(dovecot: Dovecot) -> None:
    before = dovecot.uidnext("alice")
    dovecot.deliver("alice", make_message("one"))
    dovecot.deliver("alice", make_message("two"))
    assert dovecot.uidnext("alice") == before + 2


def test_append_returns_the_new_uid(dovecot: Dovecot) -> None:
    expected = dovecot.uidnext("alice")
    assert dovecot.append("alice", "alice-pw", make_message("appended")) == expected
    assert dovecot.uidnext("alice") == expected + 1


def test_create_folder_and_uidvalidity(dovecot: Dovecot) -> None:
    dovecot.create_folder("alice", "Work Stuff")
    dovecot.deliver("alice", make_message("filed"), folder="Work Stuff")
    assert dovecot.uidnext("alice", "Work Stuff") == 2
    assert dovecot.uidvalidity("alice", "Work Stuff") > 0
    assert dovecot.uidvalidity("alice") > 0


def test_add_user_while_running(dovecot: Dovecot) -> None:
    dovecot.add_user("carol", "carol-pw")
    dovecot.deliver("carol", make_message("welcome"))
    assert dovecot.uidnext("carol") == 2
    dovecot.add_user("carol", "new-pw")  # password change is seen without restart
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            conn.login("carol", "carol-pw")
    finally:
        conn.shutdown()
    assert dovecot.uidnext("carol") == 2  # logs in with the new password


# --------------------------------------------------------------------------- IDLE / sessions

@pytest.mark.parametrize(("address", "has_idle"), [("127.0.0.1", True), ("127.0.0.2", False)])
def test_idle_advertised_only_on_main_address(dovecot: Dovecot, address: str, has_idle: bool) -> None:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    client = IMAPClient(address, dovecot.imaps_port, ssl_context=ctx, timeout=10)
    try:
        client.login("alice", "alice-pw")
        assert client.has_capability("IDLE") is has_idle
    finally:
        client.logout()


def test_extra_loopback_addresses_greet(dovecot: Dovecot) -> None:
    for address in ("127.0.0.3", "127.0.0.4"):
        with socket.create_connection((address, dovecot.imap_port), timeout=5) as sock:
            assert sock.recv(64).startswith(b"* OK")


def test_who_sees_session_and_kick_ends_it(dovecot: Dovecot) -> None:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    client = IMAPClient(dovecot.host, dovecot.imaps_port, ssl_context=ctx, timeout=5)
    try:
        client.login("alice", "alice-pw")
        client.select_folder("INBOX")
        assert wait_for(lambda: dovecot.who() == ["alice"])

        dovecot.kick("alice")
        assert wait_for(lambda: dovecot.who() == [])
        # Kick SIGTERMs the imap process; the client sees BYE or plain EOF.
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            client.noop()
    finally:
        client.shutdown()


def test_failed_login_does_not_slow_later_logins(dovecot: Dovecot) -> None:
    # Dovecot's auth penalty is keyed on the client IP, which is 127.0.0.1 on
    # loopback whichever address was dialled; the harness switches it off.
    conn = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            conn.login("alice", "wrong")
    finally:
        conn.shutdown()
    t0 = time.monotonic()
    dovecot.uidnext("alice")
    assert time.monotonic() - t0 < 1.5  # with the penalty it takes 4 s
