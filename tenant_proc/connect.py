"""Open, secure and log in one IMAP connection: shared by the tenant session and `check`.

Every failure becomes one of two exceptions with a one-line reason (never a secret):
FatalError (a restart cannot fix it: credentials, certificate, policy, missing STARTTLS) or
ConnectionLost (network, server busy: try again later).
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from typing import Callable, Iterable

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import CapabilityError

from tenant_proc import imap_tags  # noqa: F401  (before any IMAPClient: see the module)
from tenant_proc.dial import dial
from tenant_proc.spec import TenantSpec

SECURITY_LABELS = {"tls": "TLS", "starttls": "STARTTLS", "plain": "plain text"}
# Exchange/Office 365 throttling: "BAD Request is throttled. Suggested Backoff Time: 299910
# milliseconds" (also as NO, often followed by BYE). The server says how long; believe it.
THROTTLE_RE = re.compile(r"Suggested Backoff Time:\s*(\d+)", re.IGNORECASE)
MAX_SERVER_BACKOFF = 900.0  # never sleep longer than the failed-tenant backoff on its word


class FatalError(Exception):
    """Retrying will not help: auth or config. kind is "auth" or "config"."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class ConnectionLost(Exception):
    """The connection failed or dropped; an in-process reconnect may succeed."""


def check_policy(spec: TenantSpec) -> None:
    if spec.security == "plain" and not spec.allow_insecure and not is_loopback(spec.host):
        raise FatalError(
            "config",
            f"refusing plain-text IMAP to non-loopback host {spec.host}: "
            "use tls or starttls, or set allow_insecure",
        )


_contexts: dict[tuple[str | None, float], ssl.SSLContext] = {}


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """One verifying context per trust store, cached.

    The supervisor builds them before forking (preload_ssl_contexts), so every tenant shares
    the parent's copy: the system trust store alone costs a tenant ~3.8 MB when each process
    parses it itself. Keyed by the CA file's mtime so an updated private CA is reread.
    """
    key = (ca_file, os.stat(ca_file).st_mtime if ca_file else 0.0)
    context = _contexts.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=ca_file)
        _contexts[key] = context
    return context


def preload_ssl_contexts(specs: Iterable[TenantSpec]) -> None:
    """Parent side, before forking: build every context the tenants about to start will use."""
    for spec in specs:
        if spec.security != "plain":
            try:
                ssl_context(spec.ca_file)
            except (OSError, ssl.SSLError):
                pass  # the tenant reports the problem itself, as one clear line


def open_client(spec: TenantSpec, keepalive: Callable[[], None] | None = None) -> IMAPClient:
    """Connect and secure (TLS or STARTTLS, certificate and host name verified); no login yet.

    DNS, TCP, TLS and the greeting are bounded by connect_timeout (tenant_proc/dial.py);
    keepalive runs while the lookup is waited for."""
    check_policy(spec)
    try:
        context = ssl_context(spec.ca_file) if spec.security != "plain" else None
    except (OSError, ssl.SSLError) as exc:
        raise FatalError("config", f"cannot load ca_file {spec.ca_file}: {exc}") from None
    timeout = SocketTimeout(connect=spec.imap.connect_timeout, read=spec.imap.command_timeout)
    try:
        client = dial(spec.host, spec.port, spec.security == "tls", context, timeout, keepalive)
        if spec.security == "starttls":
            try:
                client.starttls(context)
            except CapabilityError:
                raise FatalError("config", f"{spec.host}:{spec.port} does not offer STARTTLS") from None
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        raise FatalError("config",
                         f"certificate verification failed for {spec.host}:{spec.port}: {reason}") from None
    except ssl.SSLError as exc:
        raise ConnectionLost(f"TLS handshake with {spec.host}:{spec.port} failed: {exc.reason or exc}") from None
    except (OSError, socket.timeout) as exc:
        raise ConnectionLost(f"cannot connect to {spec.host}:{spec.port}: {exc.strerror or exc}") from None
    tune_socket(client.socket())
    return client


def login(client: IMAPClient, spec: TenantSpec):  # -> tenant_proc.signin.SignIn
    """Log in with the tenant's method (password, XOAUTH2, OAUTHBEARER): tenant_proc/signin."""
    from tenant_proc.signin import login as sign_in  # signin imports this module: import late

    return sign_in(client, spec)


def suggested_backoff(text: str) -> float | None:
    """Seconds the server asked us to wait ("Suggested Backoff Time: N ms"), or None."""
    match = THROTTLE_RE.search(text)
    if match is None:
        return None
    return min(int(match.group(1)) / 1000.0, MAX_SERVER_BACKOFF)


def tune_socket(sock: socket.socket) -> None:
    """Find a silently dead peer even when we only listen (NAT boxes drop quiet flows), and
    send each command at once."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
    # Unacknowledged data (or keepalives) for 2 minutes: the kernel gives up on the peer.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 120_000)
    # Every write is a whole command: pipelined ones (DONE, then the FETCHes) must leave at
    # once, not wait behind Nagle for the server's ACK of the one before. It also keeps the
    # quick-ACK mode the reads arm (quick_ack.py) from being undone by a held-back segment
    # that the kernel sends only later.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
