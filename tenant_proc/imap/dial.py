"""Open the TCP (and TLS) connection with one deadline that includes the DNS lookup.

socket.create_connection() resolves with getaddrinfo(), which has no timeout: a slow or dead
resolver could hold a tenant far beyond connect_timeout. Here the lookup (tenant_proc/dns.py) runs
in a short-lived helper thread the tenant waits on (beating meanwhile) for at most
connect_timeout; then TCP connect, TLS handshake and greeting share what is left of one
connect_timeout.
"""
from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable

from imapclient import IMAPClient, SocketTimeout, imap4, tls

from tenant_proc.dns import Address, resolve


def _connect(addresses: list[Address], deadline: float) -> socket.socket:
    error: OSError = OSError("no address")
    for family, kind, proto, _, sockaddr in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.settimeout(max(deadline - time.monotonic(), 0.001))  # handshake and greeting too
        return sock
    raise error


class _Plain(imap4.IMAP4WithTimeout):
    def __init__(self, addresses: list[Address], deadline: float, host: str, port: int, timeout: float) -> None:
        self._addresses, self._deadline = addresses, deadline
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return _connect(self._addresses, self._deadline)


class _Tls(tls.IMAP4_TLS):
    def __init__(self, addresses: list[Address], deadline: float, host: str, port: int,
                 context: ssl.SSLContext | None, timeout: float) -> None:
        self._addresses, self._deadline = addresses, deadline
        super().__init__(host, port, context, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return tls.wrap_socket(_connect(self._addresses, self._deadline), self.ssl_context, self.host)


class _Client(IMAPClient):
    def __init__(self, addresses: list[Address], deadline: float, *args: Any, **kwargs: Any) -> None:
        self._addresses, self._deadline = addresses, deadline
        super().__init__(*args, **kwargs)

    def _create_IMAP4(self) -> Any:
        timeout = self._timeout.connect
        if self.ssl:
            return _Tls(self._addresses, self._deadline, self.host, self.port, self.ssl_context, timeout)
        return _Plain(self._addresses, self._deadline, self.host, self.port, timeout)


def dial(host: str, port: int, use_tls: bool, context: ssl.SSLContext | None, timeout: SocketTimeout,
         keepalive: Callable[[], None] | None = None) -> IMAPClient:
    """An IMAPClient connected within timeout.connect (+ the same again at most for DNS)."""
    addresses = resolve(host, port, timeout.connect, keepalive)
    deadline = time.monotonic() + timeout.connect
    return _Client(addresses, deadline, host, port, ssl=use_tls, ssl_context=context, timeout=timeout)
