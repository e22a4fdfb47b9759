"""A self-contained Courier IMAP 5.0 for tests, run from the private root (tests/servers/imap/altserver.py).

/etc/courier (imapd, imapd-ssl, authdaemonrc, userdb, the TLS cert) is the instance's own inside
its mount namespace, /run/courier a private tmpfs. Logins go through Courier's authdaemond with a
userdb (crypt passwords, mail as `nobody`); mail is a Maildir per user in the runtime dir.
Implicit TLS via couriertcpd + couriertls on `imaps_port`, with the tests' CA.

Courier quirks the product meets here: real-time IDLE needs `IMAP_ENHANCEDIDLE=1` and gamin
(`gam_server`, started on demand by libgamin, installed by scripts/other-imap-servers.sh); without
them IDLE only re-checks the folder every IMAP_IDLE_TIMEOUT (60 s). No LITERAL+ (APPEND with
synchronizing literals); no UIDNEXT in the SELECT/EXAMINE answer; commands pipelined behind LOGIN
are lost (imaplogin execs imapd and drops its buffered input).

    with Courier(tmp_path, users={"alice": "pw"}) as co:
        co.append("alice", "pw", make_message("hi"))
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil

from tests.servers.certs import CertPaths, session_certs
from tests.servers.imap import altserver
from tests.servers.imap.altserver import ServerProcess, SyslogSink
from tests.servers.ports import reserve_port

BINARIES = ("usr/sbin/couriertcpd", "usr/bin/couriertls", "usr/bin/imapd",
            "usr/lib/courier/courier/imaplogin", "usr/lib/courier/courier-authlib/authdaemond")
MAIL_UID = MAIL_GID = 65534  # nobody / nogroup: Courier refuses to deliver a session as root
DH_PARAMS = "/usr/share/dovecot/dh.pem"  # any PEM DH parameters do; Dovecot's are installed
TLS_VERSION = "TLSv1.2+"


class Courier(altserver.ServerLifecycle):
    """One Courier IMAP instance on 127.0.0.1 (TLS only), configured and run from a runtime dir."""

    host = "127.0.0.1"
    name = "courier"

    def __init__(self, workdir: Path, users: dict[str, str] | None = None,
                 open_inboxes: bool = True) -> None:
        """open_inboxes=False leaves brand-new Maildirs as they are (see _open_inboxes)."""
        altserver.check_available(*BINARIES)
        self.open_inboxes = open_inboxes
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users: dict[str, str] = {}
        self.certs: CertPaths = session_certs()
        self.ca_file: Path = self.certs.ca_cert
        self.runtime = altserver.make_runtime_dir("courier-")
        self._cleanup = altserver.cleanup_at_collection(self, self.runtime)
        (self.workdir / "runtime").unlink(missing_ok=True)
        (self.workdir / "runtime").symlink_to(self.runtime)
        self.etc = self.runtime / "etc"
        self.conf_dir = self.etc / "courier"
        self.mail_dir = self.runtime / "mail"
        self.log_path = self.runtime / "syslog.log"
        self.stdout_path = self.runtime / "courier.out"  # couriertcpd, imapd and authdaemond log here
        self._port = reserve_port((self.host,))  # held for this object: tests/servers/ports.py
        self.imaps_port = self._port.port
        self.port = self.imaps_port
        self._server = ServerProcess()
        self._syslog = SyslogSink(self.runtime / "syslog.sock", self.log_path)
        self._prepare()
        self.add_users(dict(users or {}))

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 20) -> None:
        if self.running:
            return
        self._syslog.start()
        # authdaemond in the background (it forks its workers), couriertcpd in front: the
        # top process is couriertcpd, authdaemond its child, so stop() finds both.
        script = ("mkdir -p /run/courier/authdaemon\n"
                  "/usr/lib/courier/courier-authlib/authdaemond &\n")
        serve = ("set -a; . /etc/courier/imapd; . /etc/courier/imapd-ssl; IMAP_TLS=1; "
                 f"exec /usr/sbin/couriertcpd -address={self.host} -maxprocs=500 -maxperip=500 "
                 f"-nodnslookup -noidentlookup {self.imaps_port} "
                 "/usr/bin/couriertls -server -tcpd "
                 "/usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir")
        self._server.spawn(altserver.namespace_command(
            self.runtime, self.etc, script, ["env", "-i", "/bin/sh", "-c", serve]), self.stdout_path)
        try:
            altserver.wait_greeting(self._server, self.host, self.imaps_port, self.ca_file,
                                    time.monotonic() + timeout, self._failure_report)
            if self.open_inboxes:
                self._open_inboxes(list(self.users))
        except Exception:
            self.stop()
            raise
        self._server.remember()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM couriertcpd, then authdaemond and any session left (they outlive it)."""
        self._server.stop(timeout)
        self._syslog.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    # ----------------------------------------------------------------- users and mail

    def add_users(self, users: dict[str, str]) -> None:
        """Add or change users; authdaemond sees a rebuilt userdb.dat at the next login."""
        for name, password in users.items():
            if not name or any(c in name + password for c in "\t\n|\0/") or name.startswith("."):
                raise ValueError(f"unusable user name or password for Courier: {name!r}")
            self._make_maildir(name)
        self.users.update(users)
        self._write_userdb()
        if self.running and self.open_inboxes:
            self._open_inboxes(list(users))

    def append(self, user: str, password: str, message: bytes, folder: str = "INBOX") -> int:
        """IMAP APPEND as the user (a synchronizing literal: no LITERAL+); returns the new UID."""
        with altserver.ImapsSession(self.host, self.imaps_port, self.ca_file, user, password) as imap:
            return altserver.append_uid(imap, folder, message, f"for {user} to {folder}")

    def deliver(self, user: str, message: bytes, folder: str = "INBOX") -> int:
        return self.append(user, self.users[user], message, folder)

    def deliver_to_maildir(self, user: str, message: bytes) -> None:
        """Drop a message into the Maildir as an MTA would (works while Courier is down)."""
        maildir = self.mail_dir / user / "Maildir"
        name = f"{time.time_ns()}.{os.getpid()}.test"
        tmp = maildir / "tmp" / name
        tmp.write_bytes(message)
        os.chown(tmp, MAIL_UID, MAIL_GID)
        tmp.rename(maildir / "new" / name)

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        with altserver.ImapsSession(self.host, self.imaps_port, self.ca_file, user,
                                    self.users[user]) as imap:
            return altserver.status_item(imap, folder, "UIDVALIDITY")

    def sessions(self) -> dict[int, str]:
        """pid -> user of every logged-in imapd (imaplogin exports AUTHENTICATED to it)."""
        found: dict[int, str] = {}
        for p in self._server.remember():
            try:
                if p.name() != "imapd":
                    continue
                user = p.environ().get("AUTHENTICATED")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if user:
                found[p.pid] = user
        return found

    def who(self) -> list[str]:
        return sorted(set(self.sessions().values()))

    def kick(self, user: str) -> None:
        """End the user's sessions: SIGTERM their imapd processes (couriertls then closes TLS)."""
        for pid, who in self.sessions().items():
            if who == user:
                altserver.signal_pid(pid, signal.SIGTERM)

    # ----------------------------------------------------------------- config

    def _prepare(self) -> None:
        self.conf_dir.mkdir(parents=True)
        self.mail_dir.mkdir()
        os.chown(self.mail_dir, MAIL_UID, MAIL_GID)
        defaults = altserver.PRIVATE_ROOT / "etc/courier"
        imapd = (defaults / "imapd").read_text()
        # Sessions of one user from one IP: the tests open several (the tenant + helpers).
        # Enhanced IDLE: pushed through gamin at once instead of polled every 60 s.
        imapd += "\nMAXPERIP=500\nIMAP_ENHANCEDIDLE=1\n"
        (self.conf_dir / "imapd").write_text(imapd)
        (self.conf_dir / "imapd-ssl").write_text((defaults / "imapd-ssl").read_text() + (
            "\nTLS_CACHEFILE=\n"  # no session cache file (it wants a `courier` user)
            f"TLS_PROTOCOL={TLS_VERSION}\nTLS_STARTTLS_PROTOCOL={TLS_VERSION}\n"))
        (self.conf_dir / "authdaemonrc").write_text(
            'authmodulelist="authuserdb"\nauthmodulelistorig="authuserdb"\ndaemons=3\n'
            'authdaemonvar=/run/courier/authdaemon\nDEBUG_LOGIN=0\nDEFAULTOPTIONS=""\nLOGGEROPTS=""\n')
        pem = self.conf_dir / "imapd.pem"  # couriertls wants key and certificate in one file
        pem.write_bytes(self.certs.server_key.read_bytes() + self.certs.server_cert.read_bytes())
        pem.chmod(0o600)
        (self.conf_dir / "dhparams.pem").write_bytes(Path(DH_PARAMS).read_bytes())

    def _open_inboxes(self, names: list[str]) -> None:
        """SELECT (read-write) each INBOX once, so Courier writes its UID db (courierimapuiddb).

        On a Maildir without one, a read-only session (EXAMINE, as the product opens the
        folder) is given a UIDVALIDITY Courier never stores; the next read-write session (the
        first APPEND) creates the db with a new one, and the examining session is not told.
        With the old skip-to-UIDNEXT behaviour the product lost what arrived before its next
        reconnect (issue 12 item 4; test_other_servers has the case with open_inboxes=False).
        Seen here 6 of 6 times; real mailboxes opened once by a mail client do not have it.
        """
        for name in names:
            with altserver.ImapsSession(self.host, self.imaps_port, self.ca_file, name,
                                        self.users[name]) as imap:
                typ, data = imap.select("INBOX")
                if typ != "OK":
                    raise altserver.ServerError(f"SELECT INBOX for {name} failed: {typ} {data!r}")

    def _make_maildir(self, user: str) -> None:
        maildir = self.mail_dir / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        altserver.chown_tree(self.mail_dir / user)

    def _write_userdb(self) -> None:
        lines = []
        for name, password in self.users.items():
            crypted = altserver.run_checked(["openssl", "passwd", "-6", "-stdin"],
                                            input=password.encode(), what="openssl passwd").strip()
            home = self.mail_dir / name
            lines.append(f"{name}\tuid={MAIL_UID}|gid={MAIL_GID}|home={home}|"
                         f"mail={home / 'Maildir'}|systempw={crypted}\n")
        userdb = self.conf_dir / "userdb"
        userdb.write_text("".join(lines))
        userdb.chmod(0o600)  # makeuserdb refuses a userdb with group or world permissions
        altserver.run_checked(altserver.usr_only_command(["/usr/sbin/makeuserdb", "-f", str(userdb)]),
                              what="makeuserdb")

    def _failure_report(self, what: str) -> str:
        return (f"Courier: {what}\n--- stdout/stderr:\n{altserver.tail(self.stdout_path)}"
                f"\n--- syslog:\n{altserver.tail(self.log_path)}")


def gamin_running() -> bool:
    """Whether a gam_server exists (Courier's IDLE is then pushed, not polled)."""
    return any(p.info["name"] == "gam_server" for p in psutil.process_iter(["name"]))

