"""Open and secure one IMAP connection (no login: tenant_proc/signin does that), shared by the
tenant session and `check`.

Every failure becomes one of two exceptions with a one-line reason (never a secret):
FatalError (a restart cannot fix it: certificate, policy, missing STARTTLS) or ConnectionLost
(network, server busy: try again later); both are defined in tenant_proc/errors.py.
"""
from __future__ import annotations

import socket
import ssl
from typing import Callable

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import CapabilityError

from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.imap import tags  # noqa: F401  (before any IMAPClient: see the module)
from tenant_proc.imap.dial import dial
from tenant_proc.imap.tls import ssl_context
from tenant_proc.loopback import is_loopback
from tenant_proc.spec import TenantSpec

SECURITY_LABELS = {"tls": "TLS", "starttls": "STARTTLS", "plain": "plain text"}


def check_policy(spec: TenantSpec) -> None:
    if spec.security == "plain" and not spec.allow_insecure and not is_loopback(spec.host):
        raise FatalError(
            "config",
            f"refusing plain-text IMAP to non-loopback host {spec.host}: "
            "use tls or starttls, or set allow_insecure",
        )


def open_client(spec: TenantSpec, keepalive: Callable[[], None] | None = None) -> IMAPClient:
    """Connect and secure (TLS or STARTTLS, certificate and host name verified); no login yet.

    DNS, TCP, TLS and the greeting are bounded by connect_timeout (tenant_proc/imap/dial.py);
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
