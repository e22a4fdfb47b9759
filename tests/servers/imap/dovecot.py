"""A self-contained Dovecot IMAP server for tests.

Everything (config, sockets, state, log, mail) lives under one work dir; nothing
is read from /etc/dovecot, so it runs beside a system Dovecot without clashing.
DESIGN-NOTES.md section 2 lists the Dovecot facts used here.

This module holds the server's lifecycle (start, stop, reaping its processes), its users and
the mail helpers run through doveadm or IMAP. What it writes before starting (dovecot.conf, the
passwd-file, the directories) is rendered by the DovecotConf mixin in dovecot_conf.py;
make_message() and the small IMAP session live in mail_helpers.py.

    with Dovecot(tmp_path, users={"alice": "pw"}) as dc:
        dc.deliver("alice", make_message("hi"))  # tests.servers.imap.mail_helpers.make_message
        IMAPClient(dc.host, dc.imaps_port, ssl_context=ssl.create_default_context(cafile=dc.ca_file))
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
import weakref
from pathlib import Path
from types import TracebackType

import psutil

from tests.servers.certs import CertPaths, session_certs
from tests.servers.imap.dovecot_conf import LIMIT, DovecotConf, _make_runtime_dir
from tests.servers.imap.mail_helpers import APPENDUID_RE, _ImapSession, _quote
from tests.servers.ports import reserve_port

CMD_TIMEOUT = 15.0         # doveadm / dovecot -n: they normally answer in well under a second


class DovecotError(RuntimeError):
    """The test server could not be started or a helper command failed."""


# --------------------------------------------------------------------------- helpers

def _raise_nofile_limit() -> None:
    """preexec_fn: one fd per client (two with TLS proxying); 1024 is too few for LIMIT."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * LIMIT + 100
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------- server

class Dovecot(DovecotConf):
    """One Dovecot instance on loopback, configured and run from `workdir`."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str] | None = None,
        trusted_cert: bool = True,
        no_idle_address: str | None = "127.0.0.2",
        auth_penalty: bool = False,
        oauth2_introspection_url: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.users: dict[str, str] = dict(users or {})
        self.trusted_cert = trusted_cert
        self.no_idle_address = no_idle_address
        self.auth_penalty = auth_penalty  # see _penalty_listener() (dovecot_conf.py)
        # Set: XOAUTH2/OAUTHBEARER logins are checked by POSTing the token to this URL
        # (tests/servers/oauth/idp.py answers it); see _oauth2_passdb() (dovecot_conf.py).
        self.oauth2_introspection_url = oauth2_introspection_url
        self.certs: CertPaths = session_certs()
        self.ca_file: Path = self.certs.ca_cert
        self.is_root = os.geteuid() == 0
        # Unique name: it appears in every Dovecot process title, so a test can
        # tell this instance's processes from the system Dovecot or other tests.
        self.instance_name = f"dovecot-test-{uuid.uuid4().hex[:8]}"

        # Config and logs (only root/the invoking user touch them) stay in workdir; what
        # Dovecot's own users must reach lives in runtime_dir (_make_runtime_dir, dovecot_conf.py).
        self.conf_path = self.workdir / "dovecot.conf"
        self.log_path = self.workdir / "dovecot.log"
        self.stdout_path = self.workdir / "dovecot.stdout"
        self.runtime_dir = _make_runtime_dir()
        # Removed when this object is collected or at exit; mail survives restart().
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.runtime_dir, ignore_errors=True)
        self.passwd_path = self.runtime_dir / "passwd"
        self.oauth2_conf_path = self.runtime_dir / "dovecot-oauth2.conf.ext"
        self.base_dir = self.runtime_dir / "run"
        self.state_dir = self.runtime_dir / "state"
        self.mail_dir = self.runtime_dir / "mail"

        self.listen = self._listen_addresses()
        # Held for this object's life (a restart binds the same ports): see tests/servers/ports.py.
        self._ports = [reserve_port(self.listen), reserve_port(self.listen)]
        self.imap_port, self.imaps_port = (r.port for r in self._ports)
        self._proc: subprocess.Popen[bytes] | None = None
        # Master + children seen, so stop() can reap stragglers.
        self._procs: dict[int, psutil.Process] = {}
        self._prepare_dirs()
        self._write_passwd()
        self.conf_path.write_text(self._render_conf())

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10) -> None:
        """Run `dovecot -F` and return once both ports greet with `* OK`."""
        if self.running:
            return
        self.conf_path.write_text(self._render_conf())
        with open(self.stdout_path, "ab") as out:
            self._proc = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_raise_nofile_limit,
                start_new_session=True,  # a Ctrl-C on pytest must not kill it mid-test
            )
        try:
            self._wait_ready(time.monotonic() + timeout)
        except DovecotError:
            self.stop()
            raise
        self._remember_children()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the master, wait, SIGKILL what is left. Safe to call twice."""
        if self._proc is None:
            return
        self._remember_children()
        proc, self._proc = self._proc, None
        deadline = time.monotonic() + timeout
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._reap_children(deadline)

    def restart(self) -> None:
        # Ports are kept, so clients configured with them reconnect to the new instance.
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pids(self) -> set[int]:
        """Live pids of this instance (master and children)."""
        self._remember_children()
        return {pid for pid, p in self._procs.items() if _alive(p)}

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- users and mail

    def add_user(self, name: str, password: str) -> None:
        """Add or change a user; returns once Dovecot's next login will see it.

        Dovecot stats the passwd-file at most once per second (per auth process
        clock second) and compares whole-second mtime + size. So the file's
        mtime is bumped past the old one, and while running we wait (< 1 s)
        for the second in which we wrote to end.
        """
        self.users[name] = password
        written_at = time.time()
        self._write_passwd()
        if self.running:
            time.sleep(max(0.0, int(written_at) + 1 - time.time()))

    def add_users(self, users: dict[str, str]) -> None:
        """add_user for many at once: one passwd-file write and at most one wait (< 1 s)."""
        self.users.update(users)
        written_at = time.time()
        self._write_passwd()
        if self.running:
            time.sleep(max(0.0, int(written_at) + 1 - time.time()))

    def deliver(self, user: str, message_bytes: bytes, folder: str = "INBOX") -> None:
        """Store a message without IMAP (`doveadm save`), as an MTA's LDA would."""
        self._doveadm("save", "-u", user, "-m", folder, input=message_bytes)
        self._fix_owner(user)

    def append(self, user: str, password: str, message_bytes: bytes, folder: str = "INBOX") -> int:
        """IMAP APPEND on the plain port; returns the new UID (from APPENDUID)."""
        with self._imap(user, password) as imap:
            typ, data = imap.append(_quote(folder), None, None, message_bytes)
        match = APPENDUID_RE.search(b" ".join(d for d in data if isinstance(d, bytes)))
        if typ != "OK" or match is None:
            raise DovecotError(f"APPEND for {user} to {folder} failed: {typ} {data!r}")
        return int(match.group(2))

    def create_folder(self, user: str, name: str) -> None:
        self._doveadm("mailbox", "create", "-u", user, name)
        self._fix_owner(user)

    def uidnext(self, user: str, folder: str = "INBOX") -> int:
        return self._status(user, folder, "UIDNEXT")

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        return self._status(user, folder, "UIDVALIDITY")

    def who(self) -> list[str]:
        """Usernames with live IMAP sessions (sorted, each listed once)."""
        # `who -1`: a header line ("username proto pid ip"), then one line per connection.
        lines = self._doveadm("who", "-1").splitlines()[1:]
        return sorted({line.split()[0] for line in lines if line.strip()})

    def sessions_after(self, timeout: float) -> list[str]:
        """who() once no session is left, or when timeout runs out (a LOGOUT ends its session
        a moment after the client saw the answer)."""
        deadline = time.monotonic() + timeout
        while (users := self.who()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return users

    def kick(self, user: str) -> None:
        """End all sessions of `user`: doveadm SIGTERMs its imap processes, the
        client reads `* BYE Server shutting down.` then EOF."""
        self._doveadm("kick", user)

    def _fix_owner(self, user: str) -> None:
        """doveadm run as root may leave root-owned files the imap process (nobody) can't use."""
        if not self.is_root:
            return
        home = self.mail_dir / user
        if not home.exists():
            return
        shutil.chown(home, "nobody", "nogroup")
        for root, dirs, files in os.walk(home):
            for name in (*dirs, *files):
                shutil.chown(os.path.join(root, name), "nobody", "nogroup")

    # ----------------------------------------------------------------- process bookkeeping

    def _wait_ready(self, deadline: float) -> None:
        pending = {self.imap_port: False, self.imaps_port: True}  # port -> use TLS
        while pending:
            if self._proc is None or self._proc.poll() is not None:
                raise DovecotError(self._failure_report("dovecot exited during start"))
            for port, use_tls in list(pending.items()):
                if _greets(self.host, port, use_tls):
                    del pending[port]
            if pending and time.monotonic() > deadline:
                raise DovecotError(self._failure_report(f"no '* OK' greeting on ports {list(pending)}"))
            if pending:
                time.sleep(0.02)

    def _failure_report(self, what: str) -> str:
        """Why start failed: `dovecot -n` names config errors; the log tells the rest."""
        check = subprocess.run(
            ["dovecot", "-n", "-c", str(self.conf_path)],
            capture_output=True, text=True, timeout=CMD_TIMEOUT,
        )
        config = check.stderr.strip() or "config OK according to dovecot -n"
        return (
            f"{what}\n--- dovecot -n: {config}\n"
            f"--- stdout/stderr:\n{_tail(self.stdout_path)}\n--- log:\n{_tail(self.log_path)}"
        )

    def _remember_children(self) -> None:
        """Record the master's children while it lives: after a SIGKILL they are orphans."""
        if self._proc is None:
            return
        try:
            master = psutil.Process(self._proc.pid)
            for p in [master, *master.children(recursive=True)]:
                self._procs.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def _reap_children(self, deadline: float) -> None:
        """Children exit on their own once the master is gone; kill the slow ones at the deadline.

        Polls instead of psutil.wait_procs: the children are not ours (their parent
        was the master), and a zombie left for init to reap already counts as gone.
        """
        alive = list(self._procs.values())
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [p for p in alive if _alive(p)]
        for p in alive:
            try:
                p.kill()  # psutil checks the start time, so this never hits a reused pid
            except psutil.NoSuchProcess:
                pass
        self._procs.clear()

    # ----------------------------------------------------------------- commands

    def _doveadm(self, *args: str, input: bytes | None = None) -> str:
        proc = subprocess.run(
            ["doveadm", "-c", str(self.conf_path), *args],
            input=input if input is not None else b"",
            capture_output=True,
            timeout=CMD_TIMEOUT,
        )
        if proc.returncode != 0:
            raise DovecotError(
                f"doveadm {' '.join(args)} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc.stdout.decode(errors="replace")

    def _imap(self, user: str, password: str) -> _ImapSession:
        return _ImapSession(self.host, self.imap_port, user, password)

    def _status(self, user: str, folder: str, item: str) -> int:
        if user not in self.users:
            raise KeyError(f"unknown user {user!r}: add it with add_user() first")
        with self._imap(user, self.users[user]) as imap:
            typ, data = imap.status(_quote(folder), f"({item})")
        match = re.search(rb"%s (\d+)" % item.encode(), data[0] or b"") if typ == "OK" else None
        if match is None:
            raise DovecotError(f"STATUS {folder} ({item}) for {user} failed: {typ} {data!r}")
        return int(match.group(1))


# --------------------------------------------------------------------------- small functions

def _greets(host: str, port: int, use_tls: bool) -> bool:
    """True when a fresh connection reads the IMAP greeting (`* OK`)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            if use_tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # readiness only; tests check verification
                with ctx.wrap_socket(sock) as tls:
                    return tls.recv(64).startswith(b"* OK")
            return sock.recv(64).startswith(b"* OK")
    except (OSError, ssl.SSLError):
        return False


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(missing)"
