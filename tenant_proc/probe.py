"""`idle-supervisor check`: log in once and report what the server offers, then log out."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from imapclient.exceptions import IMAPClientError

from tenant_proc.connect import SECURITY_LABELS, ConnectionLost, FatalError, login, open_client
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

    def summary(self) -> str:
        if not self.ok:
            return f"FAIL {self.error}"
        push = "IDLE" if self.idle else "no IDLE (will poll)"
        return (f"OK {self.security}, {push}, UIDVALIDITY {self.uidvalidity}, "
                f"UIDNEXT {self.uidnext}, {self.messages} messages ({self.seconds:.2f}s)")


def probe_tenant(spec: TenantSpec, timeout: float = 15.0) -> ProbeResult:
    spec = replace(spec, imap=replace(spec.imap, connect_timeout=timeout, command_timeout=timeout))
    label = SECURITY_LABELS[spec.security]
    started = time.monotonic()
    try:
        client = open_client(spec)
    except (FatalError, ConnectionLost) as exc:
        return ProbeResult(False, label, error=str(exc))
    try:
        login(client, spec)
        status = client.folder_status(spec.folder, [b"UIDVALIDITY", b"UIDNEXT", b"MESSAGES"])
        return ProbeResult(
            True, label, idle=client.has_capability("IDLE"),
            uidvalidity=status.get(b"UIDVALIDITY"), uidnext=status.get(b"UIDNEXT"),
            messages=status.get(b"MESSAGES"), seconds=time.monotonic() - started,
        )
    except (FatalError, ConnectionLost) as exc:
        return ProbeResult(False, label, error=str(exc))
    except (IMAPClientError, OSError) as exc:
        return ProbeResult(False, label, error=f"{spec.folder!r}: {' '.join(str(exc).split())[:200]}")
    finally:
        try:
            client.logout()
        except Exception:  # best effort: the answer is already known
            pass
