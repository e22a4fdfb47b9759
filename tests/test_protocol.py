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


@pytest.mark.parametrize("frame", [b"not json", b"[1,2]", b'{"type":"evil"}', b"{}",
                                   b"{" + b" " * (protocol.MAX_MESSAGE_BYTES + 1) + b"}"])
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
