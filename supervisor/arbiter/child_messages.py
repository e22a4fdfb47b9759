"""The arbiter's reading of its children's pipes: bounded frames, one handler per message type.

A mixin of Arbiter (like reconcile.py). Pipes are read without blocking (ipc/framing.py): a
child that stops half-way through a frame leaves it buffered, never holds the loop, and is killed
as hung when its heartbeats stay away. Every frame is read with the protocol's size bound: a
child that announces a larger one misbehaves (a bug, or a handler writing to the pipe) and is
stopped, with one log line; the others are untouched, and the parent never allocates for it.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ipc import protocol
from supervisor.children.command_groups import reported_group
from supervisor.children.records import State, StopReason, TenantRecord
from supervisor.service.metrics import LatencyHistogram

log = logging.getLogger("supervisor")

MESSAGES_PER_CHILD_PER_TICK = 64  # one chatty child cannot starve the loop


class ChildMessages:
    # The arbiter's (supervisor/arbiter/arbiter.py): annotations only, nothing defined at runtime.
    config: Any
    latency: LatencyHistogram
    status_dirty: bool

    if TYPE_CHECKING:
        def _unregister(self, obj: Any) -> None: ...

        def stop_tenant(self, record: TenantRecord, reason: StopReason, now: float,
                        timeout: float, send_stop: bool = True) -> None: ...

    def read_messages(self, ready: set[Any], candidates: list[TenantRecord]) -> None:
        """Read from the children whose pipe is readable (candidates: from the ready events)."""
        now = time.monotonic()
        for record in {id(r): r for r in candidates}.values():  # pipe and sentinel: once
            handle = record.handle
            if handle is None or not handle.conn_open or handle.conn not in ready:
                continue
            for _ in range(MESSAGES_PER_CHILD_PER_TICK):
                if not self._read_one(record, now, alive=True):
                    break

    def drain_last_words(self, record: TenantRecord, now: float) -> None:
        """Read what a dead child sent just before exiting (its fatal reason, final counters)."""
        while self._read_one(record, now, alive=False):
            pass

    def _read_one(self, record: TenantRecord, now: float, alive: bool) -> bool:
        """Read and handle one message if a whole one is there; False when there is none yet
        (a partial frame stays buffered: ipc/framing.py) or the pipe is done for."""
        handle = record.handle
        if handle is None or not handle.conn_open:
            return False
        try:
            handle.writer.flush()  # it talks, so it may read again: what a full pipe held back
            payload = handle.reader.next_payload()
        except protocol.OversizedFrame as exc:
            self._close_pipe(record)
            if alive:  # a child that broke the protocol is stopped, not trusted further
                log.error("[%s] sent an IPC %s: stopping it", record.name, exc)
                record.last_error = f"IPC {exc}"
                self.stop_tenant(record, StopReason.HUNG, now,
                                 self.config.supervisor.kill_timeout, send_stop=False)
            return False
        except (EOFError, OSError):
            self._close_pipe(record)  # the sentinel will tell us it exited
            return False
        if payload is None:
            return False
        message = protocol.decode_or_drop(payload)
        if message is not None:
            self.handle_message(record, message, now)
        return True

    def _close_pipe(self, record: TenantRecord) -> None:
        record.handle.conn_open = False
        self._unregister(record.handle.conn)  # else an EOF pipe wakes every tick

    def handle_message(self, record: TenantRecord, message: dict[str, Any], now: float) -> None:
        kind = message["type"]
        if kind == "heartbeat":
            previous = record.display_state()
            seen = (record.mode, record.last_error, dict(record.counters))
            record.on_heartbeat(now, message)
            if record.display_state() != previous and record.state is not State.STOPPING:
                log.debug("[%s] %s -> %s", record.name, previous, record.display_state())
            if record.display_state() != previous or seen != (record.mode, record.last_error,
                                                              record.counters):
                self.status_dirty = True
            return
        self.status_dirty = True
        if kind == "hello":
            record.last_heartbeat = now
        elif kind == "fatal":
            record.on_fatal(str(message.get("kind", "error")), str(message.get("reason", "")))
        elif kind == "processed":
            record.last_heartbeat = now
            # Counted now, not at the next heartbeat: `status` right after a handled email
            # shows it. The child counts each one as it sends this message, so the next
            # heartbeat's counters (base + the child's own) agree with this.
            outcome = message.get("status")
            if outcome in ("processed", "failed", "skipped"):
                record.counters[outcome] += 1
            skipped = f"skipped_{message.get('class')}"
            if outcome == "skipped" and skipped in record.counters:
                record.counters[skipped] += 1
            latency = message.get("latency")
            if isinstance(latency, (int, float)) and latency >= 0:
                self.latency.observe(float(latency))
        elif kind == "command_group":
            record.handle.command_group = reported_group(message)
        else:
            log.warning("[%s] unexpected IPC message type %r dropped", record.name, kind)
