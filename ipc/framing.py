"""The parent's side of the pipe framing: frames read and written without ever blocking.

The wire format is multiprocessing.Connection's, so a tenant keeps using send_bytes/recv_bytes:
a 4-byte big-endian signed length, then that many bytes (a length of -1 announces an 8-byte
length for frames above 2 GiB, which we refuse). The parent's end of each pipe is non-blocking:
recv_bytes would wait for the rest of a frame, and a child that wrote half of one and stalled
(SIGSTOP, a bug, a handler writing to the pipe fd) would hold the whole supervisor loop: no other
tenant supervised, no status, no signals. Here a partial frame is only buffered (at most one
header and MAX_MESSAGE_BYTES per child) and decoded when complete; a child that stays mid-frame
sends no heartbeat either, so the heartbeat check kills it as hung.

Reads take exactly what the current frame still needs (the header, then its payload), as
recv_bytes did: the buffer never holds more than the frame being read, and bytes of the next
frame stay in the pipe, where the event loop sees them.

Writes (stop, replay) go into a small per-child outbox flushed without blocking: a child that
does not read its pipe (stopped, busy) fills the socket buffer, and a frame written half-way
would corrupt its stream, so the rest stays queued for the next flush instead.
"""
from __future__ import annotations

import os
import struct

from ipc.protocol import MAX_MESSAGE_BYTES, OversizedFrame

LENGTH = struct.Struct("!i")
HUGE_LENGTH = -1  # multiprocessing: an 8-byte length follows (frames above 2 GiB)
OUTBOX_BYTES = 4096  # a stop or replay frame is ~20 bytes; more unsent is a child not reading


def frame(payload: bytes) -> bytes:
    """payload as one multiprocessing.Connection frame."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Complete frames from a non-blocking fd; partial ones wait in a bounded buffer."""

    def __init__(self, fd: int, max_payload: int = MAX_MESSAGE_BYTES) -> None:
        self.fd = fd
        self.max_payload = max_payload
        self._header = bytearray()
        self._size: int | None = None  # of the frame being read, once its header is complete
        self._payload = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held here (never above the header + max_payload)."""
        return len(self._header) + len(self._payload)

    def next_payload(self) -> bytes | None:
        """The next complete frame's payload, or None when the pipe has no more of it now.

        Raises EOFError when the peer closed (an incomplete frame is dropped with it),
        OversizedFrame for a length above max_payload or a negative one (the stream cannot be
        resynchronised past it), and any other OSError of the read (e.g. ECONNRESET).
        """
        while True:
            if self._size is None:
                chunk = self._read(LENGTH.size - len(self._header))
                if chunk is None:
                    return None
                self._header += chunk
                if len(self._header) < LENGTH.size:
                    continue
                self._size = self._checked(LENGTH.unpack(self._header)[0])
            if len(self._payload) < self._size:
                chunk = self._read(self._size - len(self._payload))
                if chunk is None:
                    return None
                self._payload += chunk
                continue
            payload = bytes(self._payload)
            self._header.clear()
            self._payload.clear()
            self._size = None
            return payload

    def _checked(self, size: int) -> int:
        if size == HUGE_LENGTH or size > self.max_payload:  # refused before any of it is read
            raise OversizedFrame(f"frame above {self.max_payload} bytes")
        if size < 0:
            raise OversizedFrame(f"frame header with an invalid length ({size})")
        return size

    def _read(self, wanted: int) -> bytes | None:
        try:
            chunk = os.read(self.fd, wanted)
        except (BlockingIOError, InterruptedError):
            return None
        if not chunk:
            raise EOFError("peer closed" + (f" {self.buffered} bytes into a frame" if self.buffered else ""))
        return chunk


class FrameWriter:
    """Frames to a non-blocking fd through a bounded outbox; never blocks, never tears a frame."""

    def __init__(self, fd: int, max_queued: int = OUTBOX_BYTES) -> None:
        self.fd = fd
        self.max_queued = max_queued
        self._outbox = bytearray()

    @property
    def queued(self) -> int:
        return len(self._outbox)

    def send(self, payload: bytes) -> bool:
        """Queue one frame and write what the pipe takes now. False when it cannot go: the
        outbox is full (the peer has not read for a long while) or the peer is gone."""
        data = frame(payload)
        if len(self._outbox) + len(data) > self.max_queued:
            return False
        self._outbox += data
        return self.flush()

    def flush(self) -> bool:
        """Write queued bytes until the pipe is full; False when the peer is gone."""
        while self._outbox:
            try:
                written = os.write(self.fd, self._outbox)
            except (BlockingIOError, InterruptedError):
                return True  # still queued: the next send or flush tries again
            except OSError:  # EPIPE, ECONNRESET: nobody will read these
                self._outbox.clear()
                return False
            del self._outbox[:written]
        return True
