"""ACK the server's bytes at once instead of after Linux's delayed-ACK timer (40 ms).

Servers that write one answer in several small pieces with Nagle on (Cyrus's FETCH answers,
Courier's couriertls records) hold each piece back until the previous one is acknowledged; a
client that delays its ACK then adds ~40 ms to every reaction. TCP_QUICKACK switches the
delayed ACKs off, but Linux switches them back on by itself (each command we send makes the
flow look interactive again), so it is set again before every read. One setsockopt per read:
about a microsecond.
"""
from __future__ import annotations

import socket

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class QuickAck:
    """arm() before each read; gives up quietly where the option does not exist (not TCP)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._enabled = _QUICKACK is not None and sock.family in (socket.AF_INET, socket.AF_INET6)

    def arm(self) -> None:
        if not self._enabled:
            return
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:  # a closed socket's read reports its own error; never ask again
            self._enabled = False
