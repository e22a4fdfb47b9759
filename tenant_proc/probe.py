"""`idle-supervisor check`: log in once and report what the server offers, then log out."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from imapclient.exceptions import IMAPClientError

from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.imap.connect import SECURITY_LABELS, open_client
from tenant_proc.signin.errors import MailboxNotConnected, not_connected, raise_if_mailbox_refused
from tenant_proc.signin.login import MECHANISMS, login
from tenant_proc.signin.login import token_source as signin_source
from tenant_proc.spec import TenantSpec


@dataclass
class ProbeResult:
    ok: bool
    security: str
    idle: bool | None = None
    uidvalidity: int | None = None
    uidnext: int | None = None
    messages: int | None = None
    seconds: float = 0.0
    error: str | None = None
    auth: str | None = None  # OAuth tenants: what sign-in did, e.g. "XOAUTH2 via google ...: token obtained"

    def summary(self) -> str:
        if not self.ok:
            return f"FAIL {self.auth}: {self.error}" if self.auth else f"FAIL {self.error}"
        push = "IDLE" if self.idle else "no IDLE (will poll)"
        auth = f"{self.auth}, " if self.auth else ""
        return (f"OK {self.security}, {auth}{push}, UIDVALIDITY {self.uidvalidity}, "
                f"UIDNEXT {self.uidnext}, {self.messages} messages ({self.seconds:.2f}s)")


def probe_tenant(spec: TenantSpec, timeout: float = 15.0) -> ProbeResult:
    spec = replace(spec, imap=replace(spec.imap, connect_timeout=timeout, command_timeout=timeout))
    label = SECURITY_LABELS[spec.security]
    started = time.monotonic()
    try:
        client = open_client(spec)
    except (FatalError, ConnectionLost) as exc:
        return ProbeResult(False, label, error=str(exc))
    logged_in = False
    try:
        login(client, spec)
        logged_in = True
        try:
            status = client.folder_status(spec.folder, [b"UIDVALIDITY", b"UIDNEXT", b"MESSAGES"])
        except IMAPClientError as exc:
            try:
                raise_if_mailbox_refused(spec, exc)
            except MailboxNotConnected:
                # One look cannot tell passing from persistent: name the usual remedy (a running
                # tenant waits for it to persist first, session/loop.py).
                if spec.auth == "password":
                    raise
                raise not_connected(spec) from None
            raise
        return ProbeResult(
            True, label, idle=client.has_capability("IDLE"),
            uidvalidity=status.get(b"UIDVALIDITY"), uidnext=status.get(b"UIDNEXT"),
            messages=status.get(b"MESSAGES"), seconds=time.monotonic() - started,
            auth=_auth_report(spec, logged_in),
        )
    except (FatalError, ConnectionLost) as exc:
        return ProbeResult(False, label, error=str(exc), auth=_auth_report(spec, logged_in))
    except (IMAPClientError, OSError) as exc:
        return ProbeResult(False, label, error=f"{spec.folder!r}: {' '.join(str(exc).split())[:200]}",
                           auth=_auth_report(spec, logged_in))
    finally:
        try:
            client.logout()
        except Exception:  # best effort: the answer is already known
            pass


def _auth_report(spec: TenantSpec, logged_in: bool) -> str | None:
    """OAuth tenants: the method, whether a token was obtained (its lifetime), whether the IMAP
    login with it worked. None for passwords (their lines stay as they were)."""
    if spec.auth == "password" or spec.oauth is None:
        return None
    method = f"{MECHANISMS[spec.auth]} via {spec.oauth.label()}"
    source = signin_source(spec)
    if source.token is None:
        return f"{method}: no token"
    token = f"token obtained (lifetime {source.token.lifetime:.0f}s)"
    return f"{method}: {token}, {'login OK' if logged_in else 'login failed'}"
