"""End to end: the real supervisor under a fake systemd notify socket.

A datagram socket stands in for systemd; `python -m supervisor run` is started with
NOTIFY_SOCKET and WATCHDOG_USEC pointing at it, then gets SIGHUP and SIGTERM like
`systemctl reload` and `systemctl stop` would send them.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]


class FakeSystemd:
    """Collects what the supervisor sends, in order, with the sender's pid (like systemd does)."""

    def __init__(self) -> None:
        # sun_path is limited to 108 bytes: a short directory under /tmp, not pytest's tmp_path.
        self.dir = tempfile.mkdtemp(prefix="sdn-e2e-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, str]] = []  # (sender pid, datagram)

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _receive(self, timeout: float) -> bool:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return False
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = int.from_bytes(payload[:4], sys.byteorder)
        self.messages.append((pid, data.decode()))
        return True

    def wait_for(self, predicate: Callable[[str], bool], what: str, since: int = 0,
                 timeout: float = 15) -> str:
        """Wait for a message matching predicate among those from index `since` on."""
        start = since
        deadline = time.monotonic() + timeout
        while True:
            for _pid, message in self.messages[start:]:
                if predicate(message):
                    return message
            start = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout}s; got {self.texts()}")
            self._receive(remaining)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._receive(left)

    def texts(self) -> list[str]:
        return [m for _pid, m in self.messages]

    def first_index(self, predicate: Callable[[str], bool], after: int = -1) -> int:
        for i, message in enumerate(self.texts()):
            if i > after and predicate(message):
                return i
        raise AssertionError(f"missing message after #{after} in {self.texts()}")


@pytest.fixture
def fake_systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd()
    yield fake
    fake.close()


def _start_supervisor(config: Path, fake: FakeSystemd, extra_env: dict[str, str] | None = None
                      ) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_", "JOURNAL_"))}
    env.update({
        "NOTIFY_SOCKET": fake.path,
        "WATCHDOG_USEC": "2000000",  # ping every second
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        **(extra_env or {}),
    })
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor", "run", "--config", str(config)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    return out


def _is(key: str) -> Callable[[str], bool]:
    return lambda message: key in message.split("\n")


def _has_prefix(prefix: str) -> Callable[[str], bool]:
    return lambda message: any(line.startswith(prefix) for line in message.split("\n"))


def _assert_lifecycle(proc: subprocess.Popen[str], fake: FakeSystemd, status_check: Callable[[str], bool],
                      status_after_ready: bool) -> None:
    """READY, STATUS, WATCHDOG, then RELOADING/READY on SIGHUP, then STOPPING on SIGTERM."""
    try:
        fake.wait_for(_is("READY=1"), "READY=1")
        fake.wait_for(status_check, "STATUS= with the expected counts")
        fake.wait_for(_is("WATCHDOG=1"), "WATCHDOG=1")
        # Pings keep coming at about WATCHDOG_USEC / 2, not only once.
        fake.wait_for(_is("WATCHDOG=1"), "a second WATCHDOG=1", since=len(fake.messages), timeout=5)

        before_hup = len(fake.messages)
        proc.send_signal(signal.SIGHUP)
        reloading = fake.wait_for(_is("RELOADING=1"), "RELOADING=1", since=before_hup)
        assert _has_prefix("MONOTONIC_USEC=")(reloading), reloading
        fake.wait_for(_is("READY=1"), "READY=1 after the reload", since=before_hup)

        before_term = len(fake.messages)
        proc.send_signal(signal.SIGTERM)
        fake.wait_for(_is("STOPPING=1"), "STOPPING=1", since=before_term)
        assert proc.wait(timeout=30) == 0
        fake.drain(0.2)
    except BaseException:
        print(_stop(proc))
        raise

    texts = fake.texts()
    ready = fake.first_index(_is("READY=1"))
    status = fake.first_index(status_check)
    watchdog = fake.first_index(_is("WATCHDOG=1"))
    reloading = fake.first_index(_is("RELOADING=1"), after=max(ready, status, watchdog))
    ready_again = fake.first_index(_is("READY=1"), after=reloading)
    stopping = fake.first_index(_is("STOPPING=1"), after=ready_again)
    assert ready < reloading < ready_again < stopping, texts
    assert status < reloading and watchdog < reloading, texts
    if status_after_ready:  # live counts: the tenant's state reached after start-up
        assert ready < status, texts
    assert not any(_is("READY=1")(m) for m in texts[stopping:]), texts
    # NotifyAccess=main: everything must come from the supervisor itself, never a tenant.
    senders = {pid for pid, _ in fake.messages}
    assert senders == {proc.pid}, f"senders {senders}, supervisor {proc.pid}"


@pytest.mark.integration
def test_notify_sequence_without_tenants(tmp_path: Path, fake_systemd: FakeSystemd) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[supervisor]\nstate_dir = "state"\nshutdown_timeout = 5\n'
                      '[tenants]\nsource = "file"\n')
    proc = _start_supervisor(config, fake_systemd)
    _assert_lifecycle(proc, fake_systemd, _has_prefix("STATUS=0 tenants"),
                      status_after_ready=False)


@pytest.mark.integration
def test_notify_sequence_with_a_tenant_on_dovecot(tmp_path: Path, fake_systemd: FakeSystemd, dovecot) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"""
[supervisor]
state_dir = "state"
shutdown_timeout = 5
heartbeat_interval = 1
heartbeat_timeout = 10

[imap]
connect_timeout = 5
command_timeout = 5

[handler]
target = "tenant_proc.handlers:jsonl"
path = "state/emails.jsonl"

[[tenant]]
id = "acme"
name = "Acme AB"
host = "127.0.0.1"
port = {dovecot.imap_port}
security = "plain"
username = "alice"
password_env = "ACME_TEST_PASSWORD"
""")
    proc = _start_supervisor(config, fake_systemd, {"ACME_TEST_PASSWORD": "alice-pw"})
    # The tenant reaches IDLE and the STATUS= line says so.
    _assert_lifecycle(proc, fake_systemd, _has_prefix("STATUS=1 tenant: 1 idle"),
                      status_after_ready=True)
    assert dovecot.who() == [], "the tenant logged out on SIGTERM"
