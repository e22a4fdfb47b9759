"""A self-contained Cyrus IMAP 3.6 for tests, run from the private root (tests/servers/imap/altserver.py).

Config, databases, spool, sasldb and the syslog file live in one runtime dir; /etc/imapd.conf and
/etc/cyrus.conf are the instance's own inside its mount namespace. Passwords are in a sasldb
(`sasl_pwcheck_method: auxprop`); each user's INBOX `user.NAME` is created by an admin over IMAP;
IDLE is pushed by `idled`. The server runs as `nobody` (`cyrus_user`), TLS on `imaps_port` with
the tests' CA.

    with Cyrus(tmp_path, users={"alice": "pw"}) as cy:
        cy.append("alice", "pw", make_message("hi"))
"""
from __future__ import annotations

import secrets
import signal
import time
from pathlib import Path

from tests.servers.certs import CertPaths, session_certs
from tests.servers.imap import altserver
from tests.servers.imap.altserver import ServerError, ServerProcess, SyslogSink
from tests.servers.ports import reserve_port

ADMIN = "cyrusadmin"
REALM = "localhost"  # servername; sasldb entries are user@realm
BINARIES = ("usr/lib/cyrus/bin/master", "usr/lib/cyrus/bin/imapd", "usr/lib/cyrus/bin/idled",
            "usr/sbin/saslpasswd2")
CONFIG_DIRS = ("db", "proc", "socket", "log", "msg", "user", "quota", "sieve")


class Cyrus(altserver.ServerLifecycle):
    """One Cyrus instance on 127.0.0.1 (TLS only), configured and run from a runtime dir."""

    host = "127.0.0.1"
    name = "cyrus"

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        altserver.check_available(*BINARIES)
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users: dict[str, str] = {}
        self.certs: CertPaths = session_certs()
        self.ca_file: Path = self.certs.ca_cert
        self.runtime = altserver.make_runtime_dir("cyrus-")
        self._cleanup = altserver.cleanup_at_collection(self, self.runtime)
        (self.workdir / "runtime").unlink(missing_ok=True)
        (self.workdir / "runtime").symlink_to(self.runtime)  # a failed test's tmp_path shows all
        self.etc = self.runtime / "etc"
        self.config_dir = self.runtime / "lib"
        self.spool = self.runtime / "spool"
        self.run_dir = self.runtime / "run"
        self.sasldb = self.runtime / "sasldb2"
        self.log_path = self.runtime / "syslog.log"
        self.stdout_path = self.runtime / "master.out"
        self._port = reserve_port((self.host,))  # held for this object: tests/servers/ports.py
        self.imaps_port = self._port.port
        self.port = self.imaps_port
        self.admin_password = secrets.token_hex(8)
        self._server = ServerProcess()
        self._syslog = SyslogSink(self.runtime / "syslog.sock", self.log_path)
        self._prepare()
        self._set_password(ADMIN, self.admin_password)
        self.add_users(dict(users or {}))

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 20) -> None:
        if self.running:
            return
        self._syslog.start()
        self._server.spawn(altserver.namespace_command(
            self.runtime, self.etc, "", ["/usr/lib/cyrus/bin/master", "-D"]), self.stdout_path)
        try:
            altserver.wait_greeting(self._server, self.host, self.imaps_port, self.ca_file,
                                    time.monotonic() + timeout, self._failure_report)
            self._create_mailboxes(list(self.users))
        except Exception:
            self.stop()
            raise
        self._server.remember()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the master (it takes its children down), then reap what is left."""
        self._server.stop(timeout)
        self._syslog.stop()

    def restart(self) -> None:
        self.stop()
        self.start()  # same port, config and spool: clients reconnect to the same mailboxes

    # ----------------------------------------------------------------- users and mail

    def add_users(self, users: dict[str, str]) -> None:
        for name, password in users.items():
            self._set_password(name, password)
            self.users[name] = password
        if self.running:
            self._create_mailboxes(list(users))

    def append(self, user: str, password: str, message: bytes, folder: str = "INBOX") -> int:
        """IMAP APPEND as the user; returns the new UID (from APPENDUID)."""
        with self._session(user, password) as imap:
            return altserver.append_uid(imap, folder, message, f"for {user} to {folder}")

    def deliver(self, user: str, message: bytes, folder: str = "INBOX") -> int:
        return self.append(user, self.users[user], message, folder)

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        with altserver.ImapsSession(self.host, self.imaps_port, self.ca_file, user,
                                    self.users[user]) as imap:
            return altserver.status_item(imap, folder, "UIDVALIDITY")

    def sessions(self) -> dict[int, str]:
        """pid -> user of every logged-in imapd, from Cyrus's own proc files."""
        found: dict[int, str] = {}
        for entry in (self.run_dir / "proc").glob("[0-9]*"):
            try:
                fields = entry.read_text(errors="replace").split("\t")
            except FileNotFoundError:
                continue  # the session ended while we looked
            pid = int(entry.name)
            if len(fields) > 2 and fields[2] and altserver.alive_pid(pid):
                found[pid] = fields[2]
        return found

    def who(self) -> list[str]:
        """Usernames with live IMAP sessions (sorted, each once); the admin's own are left out."""
        return sorted({u for u in self.sessions().values() if u != ADMIN})

    def kick(self, user: str) -> None:
        """End the user's sessions the way an operator would: SIGTERM their imapd processes."""
        for pid, who in self.sessions().items():
            if who == user:
                altserver.signal_pid(pid, signal.SIGTERM)

    # ----------------------------------------------------------------- config

    def _prepare(self) -> None:
        self.etc.mkdir()
        for d in CONFIG_DIRS:
            (self.config_dir / d).mkdir(parents=True)
        self.spool.mkdir()
        for d in ("proc", "lock", "socket"):
            (self.run_dir / d).mkdir(parents=True)
        # Copies the server (nobody) can read: the certs' own dir is private to the test process.
        for name, source in (("server.pem", self.certs.server_cert), ("server.key", self.certs.server_key)):
            (self.runtime / name).write_bytes(source.read_bytes())
            (self.runtime / name).chmod(0o600)
            altserver.chown_tree(self.runtime / name)
        for path in (self.config_dir, self.spool, self.run_dir):
            altserver.chown_tree(path)
        (self.etc / "imapd.conf").write_text(self._imapd_conf())
        (self.etc / "cyrus.conf").write_text(self._cyrus_conf())

    def _imapd_conf(self) -> str:
        return "\n".join([
            f"configdirectory: {self.config_dir}",
            f"partition-default: {self.spool}",
            "defaultpartition: default",
            f"proc_path: {self.run_dir}/proc",
            f"mboxname_lockpath: {self.run_dir}/lock",
            f"idlesocket: {self.run_dir}/socket/idle",
            f"lmtpsocket: {self.run_dir}/socket/lmtp",
            f"notifysocket: {self.run_dir}/socket/notify",
            f"servername: {REALM}",
            f"admins: {ADMIN}",
            "cyrus_user: nobody",
            "allowplaintext: yes",
            "sasl_pwcheck_method: auxprop",
            "sasl_auxprop_plugin: sasldb",
            f"sasl_sasldb_path: {self.sasldb}",
            "sasl_mech_list: PLAIN LOGIN",
            f"tls_server_cert: {self.runtime / 'server.pem'}",
            f"tls_server_key: {self.runtime / 'server.key'}",
            "unixhierarchysep: no",
            "altnamespace: no",
            "",
        ])

    def _cyrus_conf(self) -> str:
        return (
            "START {\n  recover cmd=\"ctl_cyrusdb -r\"\n}\n"
            "SERVICES {\n"
            f"  imaps cmd=\"imapd -s\" listen=\"{self.host}:{self.imaps_port}\" prefork=0 maxchild=500\n"
            "}\n"
            # idled pushes mailbox changes to IDLE-ing imapd processes at once.
            "DAEMON {\n  idled cmd=\"idled\"\n}\n"
        )

    def _set_password(self, name: str, password: str) -> None:
        if not name or any(c in name + password for c in "\n\0") or "." in name:
            raise ValueError(f"unusable user name or password for Cyrus: {name!r}")
        altserver.run_checked(
            [str(altserver.PRIVATE_ROOT / "usr/sbin/saslpasswd2"), "-p", "-c",
             "-f", str(self.sasldb), "-u", REALM, name],
            input=password.encode(), what=f"saslpasswd2 {name}")
        altserver.chown_tree(self.sasldb)
        self.sasldb.chmod(0o600)

    def _create_mailboxes(self, names: list[str]) -> None:
        if not names:
            return
        with self._session(ADMIN, self.admin_password) as imap:
            for name in names:
                typ, data = imap.create(f"user.{name}")
                if typ != "OK" and b"exists" not in b" ".join(data).lower():
                    raise ServerError(f"CREATE user.{name} failed: {typ} {data!r}")

    def _session(self, user: str, password: str) -> altserver.ImapsSession:
        return altserver.ImapsSession(self.host, self.imaps_port, self.ca_file, user, password)

    def _failure_report(self, what: str) -> str:
        return (f"Cyrus: {what}\n--- master stdout/stderr:\n{altserver.tail(self.stdout_path)}"
                f"\n--- syslog:\n{altserver.tail(self.log_path)}")
