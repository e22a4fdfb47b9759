"""OAuth tenants for the real supervisor: one `[[tenant]]` + `[tenant.oauth]` per provider/flow,
registered at the identity-provider stand-in (tests/servers/oauth/idp.py), with its secrets passed the
documented way (`*_env` variables) and listed, so a test can look for them where they must not be.

    tenant = oauth_tenant(idp, tmp_path, "google/service_account", "ms-sa")
    run = SupervisorRun(tmp_path / "run", dovecot, [tenant.entry], extra_env=tenant.env)

A tenant with no token yet (`consent_tenant`) gets one from `idle-supervisor authorize`, run as an
operator runs it: `python -m supervisor authorize ...` (what the console script calls) in a
subprocess with the run's config and environment, its output read line by line while it waits:

    with start_authorize(run, "contoso") as authorize:
        visit = open_in_browser(authorize.url())   # tests/servers/oauth/browser.py
        code, out, err = authorize.finish()
"""
from __future__ import annotations

import base64
import functools
import queue
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.oauth.idp import IdentityProvider
from tests.servers.oauth.idp_consent import ConsentApp
from tests.servers.oauth.idp_grants import MICROSOFT_SCOPE, Grant
from tests.servers.oauth.idp_keys import (
    KeyPair,
    generate_rsa_key,
    write_service_account_file,
    write_token_command_credentials,
)

FLOWS = ("microsoft/client_credentials", "microsoft/refresh_token", "google/service_account",
         "google/refresh_token", "command")
DIRECTORY = "contoso.onmicrosoft.com"   # the Microsoft tenant (directory) of the test mailboxes
DOMAIN = "contoso.example"


@dataclass
class OAuthTenant:
    entry: TenantEntry
    mailbox: str
    grant: Grant
    env: dict[str, str] = field(default_factory=dict)      # secrets handed over by environment
    secrets: list[str] = field(default_factory=list)       # every secret configured for it
    private_key: KeyPair | None = None                     # google service_account


@functools.lru_cache(maxsize=1)
def _service_account_key() -> KeyPair:
    return generate_rsa_key()  # ~0.1-1 s each: one per test session is enough


def oauth_tenant(idp: IdentityProvider, workdir: Path, flow: str, tid: str, mechanism: str = "xoauth2",
                 host: str = "127.0.0.1", rotate: bool = True) -> OAuthTenant:
    """A tenant `tid` signing in as `tid@contoso.example` with `flow` (one of FLOWS)."""
    workdir.mkdir(parents=True, exist_ok=True)
    mailbox = f"{tid}@{DOMAIN}".lower()
    var = tid.upper().replace("-", "_")
    secret = "cs-" + secrets.token_urlsafe(18)
    client_id = f"{tid}-client"
    oauth: dict[str, Any] = {}
    env: dict[str, str] = {}
    key = None
    if flow == "microsoft/client_credentials":
        grant = idp.add_app(client_id, secret, mailbox)
        oauth = {"provider": "microsoft", "flow": "client_credentials", "tenant": DIRECTORY,
                 "client_id": client_id, "client_secret_env": f"{var}_SECRET",
                 "token_url": idp.microsoft_token_url(DIRECTORY)}
        env = {f"{var}_SECRET": secret}
    elif flow in ("microsoft/refresh_token", "google/refresh_token"):
        provider = flow.split("/")[0]
        grant = idp.add_refresh_grant(client_id, mailbox, client_secret=secret,
                                      rotate=rotate if provider == "microsoft" else False)
        assert grant.refresh_token is not None
        oauth = {"provider": provider, "flow": "refresh_token", "client_id": client_id,
                 "client_secret_env": f"{var}_SECRET", "refresh_token_env": f"{var}_REFRESH",
                 "token_url": idp.microsoft_token_url(DIRECTORY) if provider == "microsoft"
                 else idp.google_token_url}
        if provider == "microsoft":
            oauth["tenant"] = DIRECTORY
        env = {f"{var}_SECRET": secret, f"{var}_REFRESH": grant.refresh_token}
    elif flow == "google/service_account":
        key = _service_account_key()
        email = f"{tid}@idle-test.iam.gserviceaccount.com"
        grant = idp.add_service_account(email, key.public_pem, subjects=[mailbox])
        path = write_service_account_file(workdir / f"{tid}-service-account.json", email,
                                          idp.google_token_url, key)
        oauth = {"provider": "google", "flow": "service_account", "service_account_file": str(path),
                 "subject": mailbox, "token_url": idp.google_token_url}
    elif flow == "command":
        grant = idp.add_app(client_id, secret, mailbox)
        creds = write_token_command_credentials(
            workdir / f"{tid}-token-credentials.json", idp.microsoft_token_url(DIRECTORY), client_id,
            secret, MICROSOFT_SCOPE, ca_file=idp.ca_file if idp.tls else None)
        oauth = {"provider": "command",
                 # the file itself, not `-m tests.servers.oauth.idp_keys`: the product runs the command in a
                 # clean environment (no PYTHONPATH), as it should
                 "command": [sys.executable, str(Path(__file__).resolve().parents[1] / "servers" / "oauth" / "idp_keys.py"),
                             "print-token", str(creds)]}
    else:
        raise ValueError(f"unknown flow {flow!r}; one of {FLOWS}")
    if idp.tls and flow != "command":
        oauth["token_ca_file"] = idp.ca_file
    entry = TenantEntry(tid, mailbox, "", host=host, auth=mechanism, oauth=oauth, name=f"{tid} AB")
    return OAuthTenant(entry, mailbox, grant, env, [secret, *env.values()], key)


@dataclass
class ConsentTenant:
    """A refresh_token tenant with no refresh token yet: `idle-supervisor authorize` gets one."""

    entry: TenantEntry
    mailbox: str
    app: ConsentApp
    env: dict[str, str] = field(default_factory=dict)


def consent_tenant(idp: IdentityProvider, tid: str, provider: str = "microsoft",
                   client_secret: str | None = None, port: int | None = None) -> ConsentTenant:
    """Tenant `tid` (mailbox `tid@contoso.example`) whose app is registered for consent at the
    stand-in: a public client without `client_secret`, else a confidential one (Google's are
    always). `port`: set it when no Dovecot is around (the IMAP server is not contacted)."""
    mailbox = f"{tid}@{DOMAIN}".lower()
    client_id = f"{tid}-desktop"
    app = idp.consent.add_app(client_id, client_secret, provider)
    oauth: dict[str, Any] = {"provider": provider, "flow": "refresh_token", "client_id": client_id}
    if provider == "microsoft":
        oauth.update(tenant=DIRECTORY, token_url=idp.microsoft_token_url(DIRECTORY),
                     authorize_url=idp.consent.microsoft_authorize_url(DIRECTORY),
                     device_url=idp.consent.microsoft_device_url(DIRECTORY))
    else:
        oauth.update(token_url=idp.google_token_url, authorize_url=idp.consent.google_authorize_url)
    env: dict[str, str] = {}
    if client_secret is not None:
        var = f"{tid.upper().replace('-', '_')}_SECRET"
        oauth["client_secret_env"] = var
        env[var] = client_secret
    if idp.tls:
        oauth["token_ca_file"] = idp.ca_file
    entry = TenantEntry(tid, mailbox, "", port=port, ca_file=True if port is None else None, auth="xoauth2",
                        oauth=oauth, name=f"{tid} AB")
    return ConsentTenant(entry, mailbox, app, env)


def sasl_forms(mailbox: str, access_token: str) -> list[str]:
    """The base64 SASL responses a token travels in (XOAUTH2 and OAUTHBEARER, RFC 7628)."""
    xoauth2 = f"user={mailbox}\x01auth=Bearer {access_token}\x01\x01"
    oauthbearer = f"n,a={mailbox},\x01auth=Bearer {access_token}\x01\x01"
    return [base64.b64encode(s.encode()).decode() for s in (xoauth2, oauthbearer)]


def private_key_lines(key: KeyPair) -> list[str]:
    """The base64 body lines of a PEM private key: any one of them leaking is a leak."""
    return [line for line in key.private_pem.decode().splitlines() if not line.startswith("-----")][1:-1]


class AuthorizeRun:
    """`idle-supervisor authorize` running in a subprocess (start_authorize makes one)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self._err_reader = threading.Thread(target=lambda: self._stderr.append(self.proc.stderr.read()),  # type: ignore[union-attr]
                                            daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 30) -> str:
        """The next stdout line that satisfies predicate (earlier ones are kept in .lines)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"authorize printed no such line in {timeout}s: {self.lines}")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                raise AssertionError(f"authorize ended without such a line: {self.lines}, "
                                     f"stderr {self.stderr()!r}")
            self.lines.append(line)
            if predicate(line):
                return line

    def url(self, timeout: float = 30) -> str:
        """The authorization URL: the line that holds it and nothing else."""
        return self.wait_line(lambda line: line.startswith(("http://", "https://")), timeout)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """(exit code, every stdout line, stderr) once it ended."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"authorize still running after {timeout}s: {self.lines}") from None
        while True:
            try:
                line = self._queue.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return code, "\n".join(self.lines), self.stderr()

    def stderr(self) -> str:
        self._err_reader.join(timeout=5 if self.proc.poll() is not None else 0)
        return "".join(self._stderr)

    def __enter__(self) -> AuthorizeRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def start_authorize(run: SupervisorRun, tenant_id: str, *args: str) -> AuthorizeRun:
    """authorize TENANT_ID with `run`'s config file and environment (SUPABASE_* included)."""
    argv = [sys.executable, "-m", "supervisor", "authorize", tenant_id, *args,
            "--config", str(run.config_path)]
    return AuthorizeRun(argv, run.env(), str(run.workdir))
