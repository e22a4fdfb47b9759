"""The arbiter's reading of child pipes (supervisor/arbiter/child_messages.py) over real pipes: a partial
frame never blocks and is handled once complete, a dead child's last words are read up to EOF,
an oversized frame stops that child, and stop/replay reach the child's Connection."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import struct
import time
from types import SimpleNamespace
from typing import Any

import pytest

from ipc import protocol
from supervisor.arbiter.child_messages import ChildMessages
from supervisor.children.forking import ChildHandle, TenantProcess
from supervisor.children.records import StopReason, TenantRecord
from supervisor.service.metrics import LatencyHistogram


class Host(ChildMessages):
    """The few arbiter attributes ChildMessages uses."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(supervisor=SimpleNamespace(kill_timeout=2.0))
        self.latency = LatencyHistogram()
        self.status_dirty = False
        self.unregistered: list[Any] = []
        self.stopped: list[tuple[str, StopReason]] = []

    def _unregister(self, obj: Any) -> None:
        self.unregistered.append(obj)

    def stop_tenant(self, record, reason, now, timeout, send_stop=True) -> None:
        self.stopped.append((record.id, reason))


@contextlib.contextmanager
def within(seconds: float):
    """Fail, instead of hanging the run, if the body blocks (as recv_bytes did)."""
    def expire(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def child():
    """A record with a real parent end (as fork_tenant makes it) and the child's Connection."""
    parent_end, child_end = multiprocessing.Pipe(duplex=True)
    sentinel_r, sentinel_w = os.pipe()
    handle = ChildHandle(process=TenantProcess(os.getpid(), sentinel_r), conn=parent_end)
    record = TenantRecord(id="acme", name="acme", spec=None)
    record.mark_started(time.monotonic(), os.getpid(), handle)
    yield record, child_end
    for closable in (parent_end, child_end):
        closable.close()
    for fd in (sentinel_r, sentinel_w):
        os.close(fd)


def test_a_partial_frame_returns_at_once_and_is_handled_when_complete(child):
    record, child_end = child
    host = Host()
    data = protocol.encode(protocol.heartbeat("idle", "idle", {"processed": 0}, None))
    frame = struct.pack("!i", len(data)) + data
    os.write(child_end.fileno(), frame[:4 + len(data) // 2])
    with within(5):
        host.read_messages({record.handle.conn}, [record])  # before: blocked in recv_bytes
    assert record.last_heartbeat is None and record.handle.conn_open
    os.write(child_end.fileno(), frame[4 + len(data) // 2:])
    host.read_messages({record.handle.conn}, [record])
    assert record.last_heartbeat is not None and record.child_state == "idle"


def test_a_dead_childs_last_words_are_read_up_to_eof(child):
    record, child_end = child
    host = Host()
    protocol.send(child_end, protocol.heartbeat("connecting", None, {"processed": 0}, None))
    protocol.send(child_end, protocol.fatal("auth", "login failed"))
    os.write(child_end.fileno(), struct.pack("!i", 50) + b"{")  # died in the middle of a frame
    child_end.close()
    with within(5):
        host.drain_last_words(record, time.monotonic())
    assert record.last_error == "auth: login failed"
    assert not record.handle.conn_open and host.unregistered == [record.handle.conn]
    assert host.stopped == []


def test_an_oversized_frame_stops_that_child(child, caplog):
    record, child_end = child
    host = Host()
    os.write(child_end.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 1 << 40))
    host.read_messages({record.handle.conn}, [record])
    assert host.stopped == [("acme", StopReason.HUNG)]
    assert "acme] sent an IPC frame above 65536 bytes: stopping it" in caplog.text
    assert not record.handle.conn_open


def test_stop_and_replay_reach_the_childs_connection(child):
    record, child_end = child
    assert record.handle.send(protocol.stop()) and record.handle.send(protocol.replay())
    assert protocol.receive(child_end) == {"type": "stop"}
    assert protocol.receive(child_end) == {"type": "replay"}
    assert os.get_blocking(child_end.fileno())  # only the parent's end is non-blocking
