"""Heartbeat cadence of a tenant's Control, on a real pipe and a real socket (no server)."""
from __future__ import annotations

import socket
import threading
import time
from multiprocessing.connection import Pipe

from ipc import protocol
from tenant_proc.process.control import Control


def _beats(parent_end) -> list[dict]:
    beats = []
    while parent_end.poll(0):
        message = protocol.receive(parent_end)
        if message is not None and message["type"] == "heartbeat":
            beats.append(message)
    return beats


def _idle_control(idle_interval: float):
    parent_end, child_end = Pipe()
    control = Control("t", "T", child_end, heartbeat_interval=0.1, shutdown_timeout=1,
                      idle_heartbeat_interval=idle_interval)
    control.set_state("idle", mode="idle")
    return control, parent_end


def test_idle_beats_come_at_the_idle_interval_and_say_how_quiet():
    control, parent_end = _idle_control(1.0)
    first = _beats(parent_end)
    assert first[-1]["state"] == "idle" and abs(first[-1]["quiet_for"] - 0.9) < 1e-9
    control.sleep(2.2)
    assert len(_beats(parent_end)) == 2  # at 1.0 s and 2.0 s, not every 0.1 s
    control.set_state("processing")
    beat = _beats(parent_end)[-1]
    assert beat["state"] == "processing" and "quiet_for" not in beat  # busy: the usual cadence
    control.sleep(0.35)
    assert len(_beats(parent_end)) >= 3


def _server_speaks_after(delay: float) -> socket.socket:
    ours, theirs = socket.socketpair()
    threading.Timer(delay, lambda: theirs.send(b"* OK Still here\r\n")).start()
    return ours


def test_a_server_keepalive_past_half_the_idle_interval_carries_the_beat():
    control, parent_end = _idle_control(1.0)
    _beats(parent_end)
    sock = _server_speaks_after(0.6)
    assert control.wait([sock], 2.0) is True
    assert len(_beats(parent_end)) == 1  # sent on that wake-up, not 0.4 s later on a timer
    started = time.monotonic()
    control.sleep(0.9)  # the next one is due a full interval after it
    assert _beats(parent_end) == [] and time.monotonic() - started >= 0.9


def test_a_keepalive_soon_after_a_beat_does_not_beat_again():
    control, parent_end = _idle_control(1.0)
    _beats(parent_end)
    sock = _server_speaks_after(0.2)
    assert control.wait([sock], 2.0) is True
    assert _beats(parent_end) == []
