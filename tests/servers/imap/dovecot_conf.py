"""The files a test Dovecot (tests/servers/imap/dovecot.py) is run from, and their rendering.

DovecotConf is a mixin of Dovecot: it renders dovecot.conf (listeners on loopback, TLS with the
test certs, the passwd-file passdb, the optional oauth2 passdb, the no-IDLE address, limits
sized for the 500-tenant benchmark, the auth penalty off unless asked for), writes the
passwd-file and the oauth2 passdb's .conf.ext, and lays out the directories under the work dir
and the short-pathed runtime dir (_make_runtime_dir) that Dovecot's unprivileged users can
enter. Starting, stopping and the mail helpers stay in dovecot.py. DESIGN-NOTES.md section 2
lists the Dovecot facts used here.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import tempfile
import time
from pathlib import Path

from tests.servers.certs import CertPaths

LOOPBACK_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
# IDLE left out on purpose: a client connecting to the no-IDLE address must fall back to polling.
NO_IDLE_CAPABILITY = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+"
DH_FILE = "/usr/share/dovecot/dh.pem"
LIMIT = 2000               # sessions/processes: enough for the 500-tenant benchmark and then some
USERIP_CONNECTIONS = 50    # same user from one IP (default 10 is hit by tests that share a user)


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


def _invoking_user() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


class DovecotConf:
    """dovecot.conf, the passwd-file and the directories of one Dovecot instance."""

    # Dovecot's (tests/servers/imap/dovecot.py): annotations only, nothing defined at runtime.
    workdir: Path
    users: dict[str, str]
    trusted_cert: bool
    no_idle_address: str | None
    auth_penalty: bool
    oauth2_introspection_url: str | None
    certs: CertPaths
    ca_file: Path
    is_root: bool
    instance_name: str
    log_path: Path
    runtime_dir: Path
    passwd_path: Path
    oauth2_conf_path: Path
    base_dir: Path
    state_dir: Path
    mail_dir: Path
    listen: tuple[str, ...]
    imap_port: int
    imaps_port: int

    # ----------------------------------------------------------------- dovecot.conf

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

    # ----------------------------------------------------------------- directories, passwd-file

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
