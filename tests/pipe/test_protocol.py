"""The pipe protocol: framing over a real multiprocessing Pipe, bad frames dropped."""
from __future__ import annotations

import multiprocessing

import pytest

from ipc import protocol


def test_roundtrip_over_a_real_pipe():
    a, b = multiprocessing.get_context("fork").Pipe()
    assert protocol.send(a, protocol.heartbeat("idle", "idle", {"processed": 1}, None, 3.5))
    message = protocol.receive(b)
    assert message == {"type": "heartbeat", "state": "idle", "mode": "idle",
                       "counters": {"processed": 1}, "last_error": None, "server_idle_age": 3.5}


@pytest.mark.parametrize("frame", [b"not json", b"[1,2]", b'{"type":"evil"}', b"{}"])
def test_malformed_frames_are_dropped_not_raised(frame, caplog):
    a, b = multiprocessing.get_context("fork").Pipe()
    a.send_bytes(frame)
    assert protocol.receive(b) is None
    assert "dropped malformed IPC message" in caplog.text
    # the connection stays usable after a bad frame
    protocol.send(a, protocol.stop())
    assert protocol.receive(b) == {"type": "stop"}


def test_oversized_message_refused_by_sender():
    with pytest.raises(protocol.ProtocolError):
        protocol.encode({"type": "fatal", "kind": "x", "reason": "y" * protocol.MAX_MESSAGE_BYTES})


def test_send_to_closed_peer_returns_false():
    a, b = multiprocessing.get_context("fork").Pipe()
    b.close()
    assert protocol.send(a, protocol.stop()) is False


def test_receive_from_closed_peer_raises_eof():
    a, b = multiprocessing.get_context("fork").Pipe()
    a.close()
    with pytest.raises(EOFError):
        protocol.receive(b)


@pytest.mark.parametrize("announced", [protocol.MAX_MESSAGE_BYTES + 1, 1 << 40])
def test_oversized_frame_is_refused_before_it_is_read(announced):
    """A peer announcing a frame above the bound: refused from its 4/12-byte header, nothing
    allocated or waited for (the rest of the frame never even has to arrive)."""
    import os
    import struct

    parent, child = multiprocessing.Pipe(duplex=True)
    header = struct.pack("!i", announced) if announced < 2**31 else (
        struct.pack("!i", -1) + struct.pack("!Q", announced))
    os.write(child.fileno(), header)
    with pytest.raises(protocol.OversizedFrame):
        protocol.receive(parent)
    assert not parent.readable  # the stream cannot be resynchronised: treated as a dead peer
    with pytest.raises(OSError):  # and stays refused: no later frame is misread from its middle
        protocol.receive(parent)
    parent.close()
    child.close()


def test_a_frame_at_the_bound_is_received():
    parent, child = multiprocessing.Pipe(duplex=True)
    message = {"type": "fatal", "kind": "config", "reason": ""}
    filler = protocol.MAX_MESSAGE_BYTES - len(protocol.encode(message))
    message["reason"] = "x" * filler
    assert protocol.send(child, message)
    assert protocol.receive(parent) == message


def test_oversized_frame_on_a_one_way_pipe_is_refused_too():
    reader, writer = multiprocessing.Pipe(duplex=False)
    import os
    import struct

    os.write(writer.fileno(), struct.pack("!i", protocol.MAX_MESSAGE_BYTES + 1))  # header only
    with pytest.raises(protocol.OversizedFrame):
        protocol.receive(reader)
