"""Ports for test servers that can never coincide, and that nobody takes before the server binds.

A port found by binding to 0 comes from the kernel's ephemeral range, and once that socket is
closed the kernel may hand it out again at once: to the very next bind(0) (Dovecot's plain and
TLS listeners once got the same port: `duplicate listener`) or, as the local end, to any
outgoing connection of a test running beside it, before the server gets to bind it.

So a server's port comes from below the ephemeral range, which the kernel never picks by itself,
and is held with an flock on a file named after it for as long as its Reservation lives. Every
process of every test run on the machine asks the same lock files, so two helpers can never be
given the same port, whatever runs in parallel.
"""
from __future__ import annotations

import fcntl
import os
import random
import socket
import weakref
from pathlib import Path
from typing import Iterable

LOCK_DIR = Path("/tmp/idle-supervisor-test-ports")
LOWEST = 10000  # above the well-known and registered ports services on a test machine use


class NoFreePort(RuntimeError):
    pass


class Reservation:
    """One port, held (flock on LOCK_DIR/<port>) until release() or until this is collected."""

    def __init__(self, port: int, fd: int) -> None:
        self.port = port
        self._release = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        self._release()

    def __int__(self) -> int:
        return self.port

    def __repr__(self) -> str:
        return f"Reservation({self.port})"


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def reserve_port(hosts: Iterable[str] = ("127.0.0.1",)) -> Reservation:
    """A port below the ephemeral range, free on every host given, held for the caller."""
    hosts = tuple(hosts)
    low = ephemeral_range()[0]
    candidates = list(range(LOWEST, low))
    if not candidates:
        raise NoFreePort(f"no ports between {LOWEST} and the ephemeral range ({low})")
    _lock_dir()
    start = random.randrange(len(candidates))  # spread parallel runs over the range
    for port in candidates[start:] + candidates[:start]:
        fd = os.open(LOCK_DIR / str(port), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if all(_bindable(host, port) for host in hosts):
            return Reservation(port, fd)
        os.close(fd)  # something outside the tests holds it: the next one
    raise NoFreePort(f"every port from {LOWEST} to {low - 1} is reserved or in use")


def _lock_dir() -> None:
    try:
        LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
        os.chmod(LOCK_DIR, 0o1777)  # any user's test run may reserve ports here
    except PermissionError:
        pass  # made by another user, who made it shared


def _bindable(host: str, port: int) -> bool:
    """As the servers bind: with SO_REUSEADDR, so a port in TIME_WAIT counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
