"""Open the TCP (and TLS) connection with one deadline that includes the DNS lookup.

socket.create_connection() resolves with getaddrinfo(), which has no timeout: a slow or dead
resolver could hold a tenant far beyond connect_timeout. Here the lookup runs in a short-lived
helper thread the tenant waits on (beating meanwhile) for at most connect_timeout; then TCP
connect, TLS handshake and greeting share what is left of one connect_timeout.
"""
from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from typing import Any, Callable

from imapclient import IMAPClient, SocketTimeout, imap4, tls

Address = tuple[Any, ...]  # one getaddrinfo() entry


def resolve(host: str, port: int, timeout: float, keepalive: Callable[[], None] | None = None) -> list[Address]:
    """getaddrinfo with a deadline; socket.timeout when it takes longer."""
    try:
        ipaddress.ip_address(host)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except ValueError:
        pass
    outcome: dict[str, Any] = {}

    def lookup() -> None:
        try:
            outcome["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=lookup, name="dns", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout
    while worker.is_alive():
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # the thread finishes (or not) on its own; nobody waits for it
            raise socket.timeout(f"DNS lookup of {host} took longer than {timeout:g}s")
        worker.join(min(remaining, 1.0))
        if keepalive is not None:
            keepalive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["addresses"]


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
