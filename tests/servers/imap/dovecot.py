"""A self-contained Dovecot IMAP server for tests.

Everything (config, sockets, state, log, mail) lives under one work dir; nothing
is read from /etc/dovecot, so it runs beside a system Dovecot without clashing.
DESIGN-NOTES.md section 2 lists the Dovecot facts used here.

    with Dovecot(tmp_path, users={"alice": "pw"}) as dc:
        dc.deliver("alice", make_message("hi"))
        IMAPClient(dc.host, dc.imaps_port, ssl_context=ssl.create_default_context(cafile=dc.ca_file))
"""

from __future__ import annotations

import email.utils
import grp
import imaplib
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
import weakref
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from types import TracebackType

import psutil

from tests.servers.certs import CertPaths, session_certs
from tests.servers.ports import reserve_port

LOOPBACK_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
# IDLE left out on purpose: a client connecting to the no-IDLE address must fall back to polling.
NO_IDLE_CAPABILITY = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+"
DH_FILE = "/usr/share/dovecot/dh.pem"
LIMIT = 2000               # sessions/processes: enough for the 500-tenant benchmark and then some
USERIP_CONNECTIONS = 50    # same user from one IP (default 10 is hit by tests that share a user)
CMD_TIMEOUT = 15.0         # doveadm / dovecot -n: they normally answer in well under a second
IMAP_TIMEOUT = 10.0        # socket timeout for the helper IMAP connections
APPENDUID_RE = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")


class DovecotError(RuntimeError):
    """The test server could not be started or a helper command failed."""


# --------------------------------------------------------------------------- helpers

def make_message(
    subject: str,
    body: str = "hello",
    sender: str = "a@example.com",
    to: str = "b@example.com",
    message_id: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """A valid RFC 5322 message with CRLF line ends, Date and Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="example.com")
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)  # policy SMTP = CRLF line ends, as on the wire


def _quote(mailbox: str) -> str:
    """IMAP quoted string; imaplib sends mailbox names verbatim."""
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _make_runtime_dir() -> Path:
    """A short-pathed dir under /tmp that Dovecot's unprivileged users can enter.

    As root, auth (user dovecot) reads the passwd-file and imap (user nobody)
    opens sockets and the mail dir. Under pytest's tmp_path that breaks: every
    pytest session resets /tmp/pytest-of-root to 0700, so a concurrent run cuts
    off a running instance ("Permission denied ... missing +x perm"). A short
    path also keeps unix sockets under the 107-byte sun_path limit.
    """
    parent = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    runtime = Path(tempfile.mkdtemp(prefix="dovecot-", dir=parent))
    runtime.chmod(0o711)  # enter, not list
    return runtime


def _raise_nofile_limit() -> None:
    """preexec_fn: one fd per client (two with TLS proxying); 1024 is too few for LIMIT."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * LIMIT + 100
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------- server

class Dovecot:
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
        self.auth_penalty = auth_penalty  # see _penalty_listener()
        # Set: XOAUTH2/OAUTHBEARER logins are checked by POSTing the token to this URL
        # (tests/servers/oauth/idp.py answers it); see _oauth2_passdb().
        self.oauth2_introspection_url = oauth2_introspection_url
        self.certs: CertPaths = session_certs()
        self.ca_file: Path = self.certs.ca_cert
        self.is_root = os.geteuid() == 0
        # Unique name: it appears in every Dovecot process title, so a test can
        # tell this instance's processes from the system Dovecot or other tests.
        self.instance_name = f"dovecot-test-{uuid.uuid4().hex[:8]}"

        # Config and logs (only root/the invoking user touch them) stay in workdir;
        # what Dovecot's own users must reach lives in runtime_dir (see _make_runtime_dir).
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

    # ----------------------------------------------------------------- config

    def _listen_addresses(self) -> tuple[str, ...]:
        # Extra addresses give tests distinct server endpoints (127.0.0.2 hides
        # IDLE). They do NOT give a distinct client IP: see _penalty_listener().
        if self.no_idle_address and self.no_idle_address not in LOOPBACK_ADDRESSES:
            return (*LOOPBACK_ADDRESSES, self.no_idle_address)
        return LOOPBACK_ADDRESSES

    def _identity(self) -> tuple[str, str, str]:
        """(internal user, internal group, login user) for Dovecot's own processes."""
        if self.is_root:
            return "dovecot", "dovecot", "dovenull"
        me, my_group = _invoking_user()
        return me, my_group, me

    def _mail_ids(self) -> tuple[str, str]:
        # Dovecot refuses mail access as uid 0, so root runs mail as nobody.
        return ("nobody", "nogroup") if self.is_root else _invoking_user()

    def _render_conf(self) -> str:
        internal_user, internal_group, login_user = self._identity()
        mail_uid, mail_gid = self._mail_ids()
        cert = self.certs.server_cert if self.trusted_cert else self.certs.untrusted_cert
        key = self.certs.server_key if self.trusted_cert else self.certs.untrusted_key
        # Non-root cannot chroot: without `chroot =` login and anvil never greet.
        no_chroot = "" if self.is_root else "  chroot ="
        lines = [
            f"instance_name = {self.instance_name}",
            f"base_dir = {self.base_dir}",
            f"state_dir = {self.state_dir}",
            f"log_path = {self.log_path}",
            f"listen = {', '.join(self.listen)}",
            "protocols = imap",
            f"default_internal_user = {internal_user}",
            f"default_internal_group = {internal_group}",
            f"default_login_user = {login_user}",
            # Non-root users may have uid < 500 (Dovecot's default floor).
            "first_valid_uid = 1",
            "ssl = yes",
            f"ssl_cert = <{cert}",
            f"ssl_key = <{key}",
            f"ssl_dh = <{DH_FILE}",
            "disable_plaintext_auth = no",
            "mail_location = maildir:~/Maildir",
            # IDLE learns of new mail through inotify; when the machine runs out of inotify
            # instances (128 per user by default: a 500-tenant benchmark beside the tests uses
            # them all) Dovecot falls back to checking every mailbox_idle_check_interval,
            # 30 s by default. 1 s keeps tests bounded then; with inotify it changes nothing.
            "mailbox_idle_check_interval = 1 secs",
            f"default_client_limit = {LIMIT}",
            f"default_process_limit = {LIMIT}",
            *self._oauth2_mechanisms(),
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN {self.passwd_path}",
            *self._password_mechanisms(),
            "}",
            *self._oauth2_passdb(),
            "userdb {",
            "  driver = static",
            f"  args = uid={mail_uid} gid={mail_gid} home={self.mail_dir}/%u{self._all_users()}",
            "}",
            "protocol imap {",
            f"  mail_max_userip_connections = {USERIP_CONNECTIONS}",
            "}",
            "service imap-login {",
            "  inet_listener imap {",
            f"    port = {self.imap_port}",
            "  }",
            "  inet_listener imaps {",
            f"    port = {self.imaps_port}",
            "    ssl = yes",
            "  }",
            f"  process_limit = {LIMIT}",
            f"  client_limit = {LIMIT}",
            no_chroot,
            "}",
            "service imap {",
            f"  process_limit = {LIMIT}",
            "}",
            # auth and anvil serve every login process; sized so Dovecot's
            # "lower than required under max. load" warnings stay out of the log.
            "service auth {",
            f"  client_limit = {4 * LIMIT + 100}",
            "}",
            "service anvil {",
            f"  client_limit = {4 * LIMIT + 100}",
            no_chroot,
            *self._penalty_listener(),
            "}",
        ]
        if self.no_idle_address:
            lines += [
                f"local {self.no_idle_address} {{",
                "  protocol imap {",
                f"    imap_capability = {NO_IDLE_CAPABILITY}",
                "  }",
                "}",
            ]
        return "\n".join(line for line in lines if line) + "\n"

    def _oauth2_mechanisms(self) -> list[str]:
        if not self.oauth2_introspection_url:
            return []
        return ["auth_mechanisms = plain login xoauth2 oauthbearer"]

    def _password_mechanisms(self) -> list[str]:
        # Without this every OAuth login is first tried as a password ("Password mismatch").
        return ["  mechanisms = plain login"] if self.oauth2_introspection_url else []

    def _all_users(self) -> str:
        # The oauth2 passdb cannot look users up, so `doveadm save/kick -u MAILBOX` would fail
        # with "Auth USER lookup failed" unless the static userdb takes every name by itself.
        return " allow_all_users=yes" if self.oauth2_introspection_url else ""

    def _oauth2_passdb(self) -> list[str]:
        """The oauth2 passdb (DESIGN-NOTES 9): the token is POSTed as `token=...`; the answer's
        `username` must equal the SASL user. The static userdb takes any mailbox name."""
        if not self.oauth2_introspection_url:
            return []
        ca_copy = Path(shutil.copy(self.ca_file, self.runtime_dir / "oauth2-ca.pem"))
        self.oauth2_conf_path.write_text(
            "introspection_mode = post\n"
            f"introspection_url = {self.oauth2_introspection_url}\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
            "timeout_msecs = 10000\n"
            # An https introspection URL (tests/servers/oauth/idp.py with tls=True) is served with the test CA;
            # a copy, as the auth process (user dovecot) cannot enter the private certs dir.
            f"tls_ca_cert_file = {ca_copy}\n"
        )
        for path in (self.oauth2_conf_path, ca_copy):
            path.chmod(0o644)  # read by the auth process (user dovecot under root)
        return ["passdb {", "  driver = oauth2", "  mechanisms = xoauth2 oauthbearer",
                f"  args = {self.oauth2_conf_path}", "}"]

    def _penalty_listener(self) -> list[str]:
        """Switch off the auth penalty unless asked for.

        After a failed login Dovecot delays every later login from the same
        *client* IP by 2-15 s. On loopback the client IP is 127.0.0.1 whatever
        address it dialled (Dovecot logs rip=127.0.0.1, lip=127.0.0.3), so a
        wrong-password test would slow every other tenant. The auth process
        turns the penalty off when it cannot connect to this socket; mode 0
        makes sure it cannot. The failing login itself is still delayed by
        auth_failure_delay (2 s).
        """
        if self.auth_penalty:
            return []
        return ["  unix_listener anvil-auth-penalty {", "    mode = 0", "  }"]

    def _prepare_dirs(self) -> None:
        for directory in (self.workdir, self.base_dir, self.state_dir, self.mail_dir):
            directory.mkdir(parents=True, exist_ok=True)
        link = self.workdir / "runtime"  # so a failed test's tmp_path shows everything
        if link.is_symlink():
            link.unlink()
        link.symlink_to(self.runtime_dir)
        if self.is_root:
            shutil.chown(self.mail_dir, "nobody", "nogroup")

    def _write_passwd(self) -> None:
        for name, password in self.users.items():
            if any(c in name + password for c in ":\n") or not name:
                raise ValueError(f"user/password may not be empty or contain ':' or newline: {name!r}")
        tmp = self.passwd_path.with_suffix(".tmp")
        tmp.write_text("".join(f"{n}:{{PLAIN}}{p}\n" for n, p in self.users.items()))
        tmp.chmod(0o644)  # read by the auth process, which runs as user dovecot under root
        old_mtime = int(self.passwd_path.stat().st_mtime) if self.passwd_path.exists() else 0
        tmp.replace(self.passwd_path)  # atomic: a concurrent lookup never sees half a file
        mtime = max(int(time.time()), old_mtime + 1)  # a same-size rewrite must still look new
        os.utime(self.passwd_path, (mtime, mtime))

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


class _ImapSession:
    """imaplib connection that always logs out, bounded by IMAP_TIMEOUT; over TLS when given
    an ssl_context (the Cyrus and Courier helpers use it that way)."""

    def __init__(self, host: str, port: int, user: str, password: str,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.imap = (imaplib.IMAP4(host, port, timeout=IMAP_TIMEOUT) if ssl_context is None else
                     imaplib.IMAP4_SSL(host, port, ssl_context=ssl_context, timeout=IMAP_TIMEOUT))
        try:
            self.imap.login(user, password)
        except Exception:
            self.imap.shutdown()
            raise

    def __enter__(self) -> imaplib.IMAP4:
        return self.imap

    def __exit__(self, *exc: object) -> None:
        try:
            self.imap.logout()
        except (OSError, imaplib.IMAP4.error):
            self.imap.shutdown()


# --------------------------------------------------------------------------- small functions

def _invoking_user() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


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
