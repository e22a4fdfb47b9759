"""Heartbeats from the socket-read path: slow but healthy I/O is not mistaken for a hang.

The tenant is single-threaded; while imaplib reads one long FETCH answer (a trickling server,
a 25 MB email) the loop cannot send heartbeats between steps. imaplib reads through a buffered
file over the socket: this replaces that file with one whose every raw read first waits for
the socket in slices, sending a heartbeat whenever one is due (Control.heartbeat_if_due), and
keeps the socket's own timeout as the bound for silence.
"""
from __future__ import annotations

import io
import socket
import time
from typing import Callable

from imapclient import IMAPClient

from ipc.poll import readable_fds
from tenant_proc.imap.quick_ack import QuickAck

SLICE = 1.0  # seconds between "is a heartbeat due?" checks while a read waits


class _BeatingSocketIO(socket.SocketIO):
    def __init__(self, sock: socket.socket, beat: Callable[[], None]) -> None:
        super().__init__(sock, "rb")
        self._beat = beat
        self._quick_ack = QuickAck(sock)

    def readinto(self, buffer) -> int | None:  # type: ignore[override]
        self._beat()
        self._quick_ack.arm()
        sock = self._sock
        timeout = sock.gettimeout()
        pending = getattr(sock, "pending", None)
        if timeout == 0 or (pending is not None and pending()):
            return super().readinto(buffer)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
            if wait <= 0:
                raise socket.timeout("timed out")
            if readable_fds([sock.fileno()], wait):
                return super().readinto(buffer)
            self._beat()


def beat_while_reading(client: IMAPClient, beat: Callable[[], None]) -> None:
    """Swap imaplib's reader for the beating one; call once the connection is secured
    (STARTTLS replaces the file) and nothing is buffered (after the greeting/CAPABILITY)."""
    imap = client._imap
    sock = imap.sock
    old = imap.file
    raw = _BeatingSocketIO(sock, beat)
    sock._io_refs += 1  # as socket.makefile() does, so closing the file keeps the socket's count
    imap.file = io.BufferedReader(raw)
    old.close()
