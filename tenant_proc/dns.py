"""A DNS lookup with a deadline: socket.getaddrinfo() has none.

A slow or dead resolver could otherwise hold a company process far beyond any timeout it set:
socket.create_connection() resolves first and applies its timeout only to the connect. The
lookup runs in a short-lived helper thread the caller waits on (beating meanwhile, if it gives
a keepalive) for at most the timeout. Used by the IMAP connection (imap/dial.py) and by every
HTTP request (http_clients/deadline.py).
"""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any, Callable

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
