"""What tests/servers/imap/cyrus.py and tests/servers/imap/courier.py share: a server run from the private root
(scripts/other-imap-servers.sh) inside its own mount namespace, a syslog catcher, bounded
start/stop and IMAP helper sessions.

Both servers read fixed paths (/etc/imapd.conf, /etc/courier/..., /run/courier/..., /usr/lib/...).
Inside `unshare --mount` each instance gets, without touching the host:
  /usr  = private root's /usr over the host's (read-only overlay),
  /etc  = the instance's etc dir over the private root's and the host's (writable overlay),
  /run  = a fresh tmpfs,
  /dev/log = a datagram socket this module reads, so the servers' syslog lands in a file.
DESIGN-NOTES.md section 8 lists the server facts used here.
"""
from __future__ import annotations

import imaplib
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from tests.servers.imap.dovecot import _alive, _tail
from tests.servers.imap.mail_helpers import _ImapSession

PRIVATE_ROOT = Path(os.environ.get("IMAP_SERVERS_ROOT", "/opt/idle-supervisor-imap-servers"))
INSTALL_HINT = "run `bash scripts/other-imap-servers.sh` as root"
CMD_TIMEOUT = 30.0
APPENDUID_RE = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")


class ServerUnavailable(RuntimeError):
    """The private root or the privileges to run it are missing (a skip locally, a failure in CI)."""


class ServerError(RuntimeError):
    """The server did not start, or a helper command failed."""


def check_available(*relative_binaries: str) -> None:
    if os.geteuid() != 0:
        raise ServerUnavailable("the test servers need root (unshare --mount, overlay mounts)")
    for rel in relative_binaries:
        if not (PRIVATE_ROOT / rel).exists():
            raise ServerUnavailable(f"{PRIVATE_ROOT / rel} missing: {INSTALL_HINT}")
    if shutil.which("unshare") is None:
        raise ServerUnavailable("unshare (util-linux) not found")


def make_runtime_dir(prefix: str) -> Path:
    """Short path under /tmp that the servers' unprivileged user (nobody) can enter.

    Not under pytest's tmp_path: concurrent pytest sessions reset /tmp/pytest-of-root to 0700.
    """
    runtime = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    runtime.chmod(0o711)
    return runtime


def chown_tree(path: Path, user: str = "nobody", group: str = "nogroup") -> None:
    shutil.chown(path, user, group)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            shutil.chown(os.path.join(root, name), user, group)


class SyslogSink:
    """A datagram socket standing in for /dev/log; every message is appended to `log_path`."""

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self.socket_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.socket_path))
        self.socket_path.chmod(0o666)  # the servers log as user nobody too
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="syslog-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        with self.log_path.open("ab", buffering=0) as out:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._sock], [], [], 0.2)
                if ready:
                    out.write(self._sock.recv(65536).rstrip(b"\0\n") + b"\n")

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(5)
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def namespace_command(runtime: Path, etc_upper: Path, script: str, argv: list[str]) -> list[str]:
    """argv run inside a private mount namespace (see the module docstring); `script` runs first."""
    shutil.rmtree(runtime / "dev-upper", ignore_errors=True)  # the last start's /dev/log placeholder
    for d in ("etc-work", "dev-upper", "dev-work"):
        (runtime / d).mkdir(exist_ok=True)
    root = PRIVATE_ROOT
    mounts = "\n".join([
        "set -e",
        "mount --make-rprivate /",
        f"mount -t overlay overlay -o lowerdir={root}/usr:/usr /usr",
        f"mount -t overlay overlay -o lowerdir={root}/etc:/etc,upperdir={etc_upper},"
        f"workdir={runtime}/etc-work /etc",
        f"mount -t overlay overlay -o lowerdir=/dev,upperdir={runtime}/dev-upper,"
        f"workdir={runtime}/dev-work /dev",
        f"touch /dev/log && mount --bind {runtime}/syslog.sock /dev/log",
        "mount -t tmpfs -o mode=755 tmpfs /run",
        script,
        'exec "$@"',
    ])
    return ["unshare", "--mount", "sh", "-c", mounts, "in-namespace", *argv]


def usr_only_command(argv: list[str]) -> list[str]:
    """argv with the private root's /usr visible (for the servers' own tools, e.g. makeuserdb)."""
    script = (f"set -e; mount --make-rprivate /; "
              f"mount -t overlay overlay -o lowerdir={PRIVATE_ROOT}/usr:/usr /usr; exec \"$@\"")
    return ["unshare", "--mount", "sh", "-c", script, "in-namespace", *argv]


def run_checked(argv: list[str], input: bytes = b"", what: str = "") -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, timeout=CMD_TIMEOUT)
    if proc.returncode != 0:
        raise ServerError(f"{what or argv[0]} failed ({proc.returncode}): "
                          f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode(errors="replace")


class ServerProcess:
    """The server's top process plus every descendant seen, stopped with bounded waits."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, psutil.Process] = {}

    def spawn(self, argv: list[str], output: Path) -> None:
        with output.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remember(self) -> list[psutil.Process]:
        """Record the tree while it lives: after the top dies its children are orphans."""
        if self.proc is None:
            return []
        try:
            top = psutil.Process(self.proc.pid)
            for p in [top, *top.children(recursive=True)]:
                self._seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass
        return [p for p in self._seen.values() if alive(p)]

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None:
            return
        self.remember()
        proc, self.proc = self.proc, None
        deadline = time.monotonic() + timeout
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        rest = [p for p in self._seen.values() if alive(p)]
        for p in rest:  # children the master did not take down (Courier's authdaemond)
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        while rest and time.monotonic() < deadline:
            time.sleep(0.02)
            rest = [p for p in rest if alive(p)]
        for p in rest:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self._seen.clear()


alive = _alive


class ServerLifecycle:
    """What the Cyrus and Courier helpers share: a context manager around start()/stop(), the
    running flag of their ServerProcess, and add_user() in terms of add_users()."""

    _server: "ServerProcess"

    if TYPE_CHECKING:  # each server class defines these
        def start(self) -> None: ...
        def stop(self, timeout: float = 10) -> None: ...
        def add_users(self, users: dict[str, str]) -> None: ...

    @property
    def running(self) -> bool:
        return self._server.running

    def __enter__(self):  # -> the Cyrus or Courier instance
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_user(self, name: str, password: str) -> None:
        self.add_users({name: password})


def greets_tls(host: str, port: int, ca_file: Path) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            with ssl.create_default_context(cafile=str(ca_file)).wrap_socket(
                    sock, server_hostname=host) as tls:
                return tls.recv(64).startswith(b"* OK")
    except (OSError, ssl.SSLError):
        return False


def wait_greeting(server: ServerProcess, host: str, port: int, ca_file: Path,
                  deadline: float, report: Callable[[str], str]) -> None:
    while not greets_tls(host, port, ca_file):
        if not server.running:
            raise ServerError(report("the server exited during start"))
        if time.monotonic() > deadline:
            raise ServerError(report(f"no '* OK' greeting over TLS on port {port}"))
        time.sleep(0.05)


class ImapsSession(_ImapSession):
    """imaplib over TLS (the tests' CA) that always logs out, bounded by
    tests.servers.imap.mail_helpers.IMAP_TIMEOUT."""

    def __init__(self, host: str, port: int, ca_file: Path, user: str, password: str) -> None:
        super().__init__(host, port, user, password, ssl.create_default_context(cafile=str(ca_file)))


def append_uid(session: imaplib.IMAP4, mailbox: str, message: bytes, what: str) -> int:
    typ, data = session.append(mailbox, None, None, message)
    match = APPENDUID_RE.search(b" ".join(d for d in data if isinstance(d, bytes)))
    if typ != "OK" or match is None:
        raise ServerError(f"APPEND {what} failed: {typ} {data!r}")
    return int(match.group(2))


tail = _tail


def cleanup_at_collection(owner: object, runtime: Path) -> weakref.finalize:
    return weakref.finalize(owner, shutil.rmtree, runtime, ignore_errors=True)


def alive_pid(pid: int) -> bool:
    try:
        return alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def signal_pid(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # gone already: the session ended on its own


def status_item(session: imaplib.IMAP4, folder: str, item: str) -> int:
    typ, data = session.status(folder, f"({item})")
    match = re.search(rb"%s (\d+)" % item.encode(), data[0] or b"") if typ == "OK" else None
    if match is None:
        raise ServerError(f"STATUS {folder} ({item}) failed: {typ} {data!r}")
    return int(match.group(1))
