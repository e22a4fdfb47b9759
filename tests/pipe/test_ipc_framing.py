"""The parent's non-blocking frame reader and writer (ipc/framing.py) on real pipes.

Partial headers and payloads are buffered, never waited for; several frames in one write come
out one by one; oversized and invalid lengths are refused from the header; EOF mid-frame is EOF;
the wire format is multiprocessing.Connection's in both directions; a full pipe never raises
and never tears a frame.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import struct

import pytest

from ipc import protocol
from ipc.framing import FrameReader, FrameWriter, frame


@pytest.fixture
def pipe():
    """A non-blocking read end (as the parent's) and a blocking write end (as the child's)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_partial_header_is_buffered_not_waited_for(pipe):
    r, w = pipe
    reader = FrameReader(r)
    data = frame(b'{"type":"stop"}')
    os.write(w, data[:2])
    assert reader.next_payload() is None  # returns at once: nothing blocks
    assert reader.buffered == 2
    os.write(w, data[2:])
    assert reader.next_payload() == b'{"type":"stop"}'
    assert reader.buffered == 0


def test_a_partial_payload_is_buffered_until_complete(pipe):
    r, w = pipe
    reader = FrameReader(r)
    payload = b"x" * 1000
    data = frame(payload)
    os.write(w, data[:4 + 500])  # the header and half of the payload
    assert reader.next_payload() is None
    assert reader.next_payload() is None  # asked again: still nothing, still no wait
    assert reader.buffered == 504
    os.write(w, data[504:800])
    assert reader.next_payload() is None
    os.write(w, data[800:])
    assert reader.next_payload() == payload


def test_several_frames_in_one_write_come_out_one_by_one(pipe):
    r, w = pipe
    reader = FrameReader(r)
    payloads = [b"a", b"", b"b" * 300, b"c" * 20]
    os.write(w, b"".join(frame(p) for p in payloads) + frame(b"tail")[:3])
    assert [reader.next_payload() for _ in payloads] == payloads
    assert reader.next_payload() is None  # the fifth, incomplete, waits
    assert reader.buffered == 3  # only the frame being read is held: nothing read ahead


def test_only_the_current_frame_is_read_from_the_pipe(pipe):
    """The rest stays in the pipe, so the event loop still sees it readable."""
    r, w = pipe
    reader = FrameReader(r)
    os.write(w, frame(b"one") + frame(b"two"))
    assert reader.next_payload() == b"one"
    assert os.read(r, 100) == frame(b"two")


@pytest.mark.parametrize("header", [
    struct.pack("!i", protocol.MAX_MESSAGE_BYTES + 1),
    struct.pack("!i", -1) + struct.pack("!Q", 1 << 40),  # multiprocessing's huge-frame form
    struct.pack("!i", -1),  # refused from its first 4 bytes: the 8-byte length is not awaited
], ids=["above-the-bound", "huge", "huge-header-only"])
def test_an_oversized_length_is_refused_from_the_header(pipe, header):
    r, w = pipe
    reader = FrameReader(r)
    os.write(w, header)
    with pytest.raises(protocol.OversizedFrame, match="frame above 65536 bytes"):
        reader.next_payload()
    assert reader.buffered <= 4  # nothing of the announced size was allocated


def test_a_negative_length_is_refused(pipe):
    r, w = pipe
    os.write(w, struct.pack("!i", -7))
    with pytest.raises(protocol.OversizedFrame, match="invalid length"):
        FrameReader(r).next_payload()


def test_a_frame_at_the_bound_is_read(pipe):
    r, w = pipe
    reader = FrameReader(r)
    payload = b"y" * protocol.MAX_MESSAGE_BYTES
    data = frame(payload)
    # A pipe holds 64 KiB: write in two goes, reading in between, as a real child would.
    os.write(w, data[:40000])
    assert reader.next_payload() is None
    os.write(w, data[40000:])
    assert reader.next_payload() == payload
    assert reader.buffered == 0


def test_eof_mid_frame_is_eof(pipe):
    r, w = pipe
    reader = FrameReader(r)
    os.write(w, frame(b"whole") + frame(b"cut off")[:6])
    os.close(w)
    assert reader.next_payload() == b"whole"  # what came complete before the end is kept
    with pytest.raises(EOFError, match="6 bytes into a frame"):
        reader.next_payload()


def test_eof_between_frames_is_eof(pipe):
    r, w = pipe
    os.close(w)
    with pytest.raises(EOFError):
        FrameReader(r).next_payload()


def test_frames_of_a_real_connection_are_read():
    """The child keeps send_bytes: small frames (header and payload in one write) and large
    ones (above 16 KiB, header written apart) both decode."""
    parent, child = multiprocessing.Pipe(duplex=True)
    os.set_blocking(parent.fileno(), False)
    reader = FrameReader(parent.fileno())
    heartbeat = protocol.heartbeat("idle", "idle", {"processed": 2}, None, 1.5)
    large = protocol.fatal("config", "")
    large["reason"] = "z" * 40000
    child.send_bytes(protocol.encode(heartbeat))
    child.send_bytes(protocol.encode(large))
    assert protocol.decode_or_drop(reader.next_payload()) == heartbeat
    assert protocol.decode_or_drop(reader.next_payload()) == large
    assert reader.next_payload() is None
    parent.close()
    child.close()


def test_frames_written_are_what_a_real_connection_receives():
    parent, child = multiprocessing.Pipe(duplex=True)
    os.set_blocking(parent.fileno(), False)
    writer = FrameWriter(parent.fileno())
    assert writer.send(protocol.encode(protocol.stop()))
    assert writer.send(protocol.encode(protocol.replay()))
    assert protocol.receive(child) == {"type": "stop"}
    assert protocol.receive(child) == {"type": "replay"}
    parent.close()
    child.close()


def test_a_full_pipe_neither_raises_nor_tears_a_frame():
    """A child not reading its end: frames wait whole in the bounded outbox, or are refused
    (False) once it is full; after the child reads again they arrive intact, in order."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    writer = FrameWriter(ours.fileno())
    filler = 0
    try:
        while True:  # fill the socket buffer as a silent child would let it fill
            filler += ours.send(b"f" * 65536)
    except BlockingIOError:
        pass
    payload = protocol.encode(protocol.replay())
    sent = 0
    while writer.send(payload):
        sent += 1
    assert sent > 0 and 0 < writer.queued <= writer.max_queued
    received = bytearray()
    while True:  # the child reads again; each flush then writes what fits
        try:
            received += theirs.recv(65536)
        except BlockingIOError:
            if not writer.queued:
                break
        writer.flush()
    assert received[:filler] == b"f" * filler
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, bytes(received[filler:]))
    reader = FrameReader(r)
    frames = []
    while (p := reader.next_payload()) is not None:
        frames.append(p)
    assert frames == [payload] * sent and reader.buffered == 0
    for fd in (r, w):
        os.close(fd)
    ours.close()
    theirs.close()


def test_a_peer_gone_is_false_not_an_exception():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.close()
    writer = FrameWriter(ours.fileno())
    assert writer.send(protocol.encode(protocol.stop())) is False
    assert writer.queued == 0
    ours.close()
