"""The pipe protocol between the supervisor and each tenant process.

Framing: multiprocessing.Connection.send_bytes/recv_bytes already prefix every message with its
length, so one frame is one orjson object. No pickle ever crosses the pipe: a child cannot make
the parent execute anything, and a garbled frame is just a dropped message. Every frame is read
with a bound (MAX_MESSAGE_BYTES): a length above it is refused before anything is allocated, and
since the rest of that frame is still in the pipe the stream cannot be resynchronised: the
receiver treats the peer as misbehaving (OversizedFrame) and stops talking to it.

The two ends read differently. A tenant reads its (blocking) end with receive() below: the
parent writes whole frames. The supervisor never calls recv_bytes: a child that wrote part of a
frame and stalled would block its whole loop. Its ends are non-blocking and go through
ipc/framing.py, on the same wire format: a partial frame is buffered (bounded by the header and
MAX_MESSAGE_BYTES) until complete, and a child that stays mid-frame sends no more heartbeats, so
the supervisor kills it as hung; stop and replay wait in a small outbox when the child's pipe is
full, never torn and never blocking.

Child -> parent
  hello      {"type", "tenant_id", "pid"}
  heartbeat  {"type", "state", "mode", "counters": {...}, "last_error", "server_idle_age",
              "quiet_for" (optional)}
  processed  {"type", "uid", "uidvalidity", "message_id", "status", "latency", "class" (only
              with status "skipped": the class `[imap] skip` kept it from the handler for)}
  fatal      {"type", "kind": "auth" | "config", "reason"}   (just before exiting EXIT_*)
  command_group {"type", "pgid": int | null, "start": int | null}  (a `command` handler's
             program started as the leader of its own process group, with its start time
             (ipc/procstat.py); null when it ended. If the tenant dies meanwhile, the
             supervisor kills that group: the kernel only kills the leader with the tenant.)
Parent -> child
  stop       {"type"}
  replay     {"type"}   (after SIGHUP: look in the ledger for emails an operator marked with
                         `idle-supervisor retry`, and hand them over again)

Counters are plain ints: processed, failed, reconnects, logins; skipped and skipped_<class>.

quiet_for: a child waiting on its server (idle, or between polls) with nothing to report beats
less often (idle_heartbeat_interval); it says by how many seconds its next beat may come later
than heartbeat_interval, and the supervisor checks meanwhile that it sleeps (supervisor/children/liveness.py).
"""
from __future__ import annotations

import logging
from multiprocessing.connection import Connection
from typing import Any

import orjson

log = logging.getLogger("ipc")

MAX_MESSAGE_BYTES = 64 * 1024  # a heartbeat is ~300 bytes; anything near this is a bug
# Text fields that can come from an email or a server (a Message-ID, an error naming a
# subject) are cut by the constructors below, so no field's size can make a frame too big:
# encode() raising there once crashed the tenant for every such email.
MAX_FIELD_CHARS = 1000

# Exit-code contract (supervision rule 7): 0 clean stop, distinct codes for errors a restart
# cannot fix (do not fast-retry), anything else is a crash.
EXIT_OK = 0
EXIT_CONFIG = 3  # bad tenant config, unknown handler, folder missing, TLS refused by policy
EXIT_AUTH = 4  # the server rejected the credentials
EXIT_LEASE_LOST = 5  # [cluster]: writes refused, another instance owns the company now
NO_FAST_RETRY_EXITS = frozenset({EXIT_CONFIG, EXIT_AUTH})

# Child-reported states (what status.json shows while the child runs).
CHILD_STATES = ("starting", "connecting", "idle", "polling", "processing", "backoff")
MODES = ("idle", "poll")

MESSAGE_TYPES = frozenset({"hello", "heartbeat", "processed", "fatal", "stop", "replay",
                           "command_group"})


class ProtocolError(ValueError):
    """A frame that is not a valid message; the receiver logs and drops it."""


class OversizedFrame(OSError):
    """The peer announced a frame above MAX_MESSAGE_BYTES. An OSError because the connection
    is unusable from here on (multiprocessing marks it unreadable), as for a broken pipe."""


def encode(message: dict[str, Any]) -> bytes:
    data = orjson.dumps(message)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def decode(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("message is not a JSON object")
    if message.get("type") not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {str(message.get('type'))[:40]!r}")
    return message


def send(conn: Connection, message: dict[str, Any]) -> bool:
    """Send one message; False if the other side is gone (the caller decides what that means)."""
    try:
        conn.send_bytes(encode(message))
        return True
    except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
        return False


def receive(conn: Connection) -> dict[str, Any] | None:
    """Read one frame. Returns None for a bad frame (logged). Raises EOFError when closed,
    OversizedFrame for a frame above MAX_MESSAGE_BYTES (nothing of it is allocated)."""
    was_open = not conn.closed
    try:
        data = conn.recv_bytes(MAX_MESSAGE_BYTES)  # EOFError / OSError propagate: the peer is gone
    except OSError:
        # recv_bytes refused the announced length: it marks a duplex end unreadable and closes
        # a read-only one. Any other OSError leaves the connection as it was.
        if was_open and (conn.closed or not conn.readable):
            raise OversizedFrame(f"frame above {MAX_MESSAGE_BYTES} bytes") from None
        raise
    return decode_or_drop(data)


def decode_or_drop(data: bytes) -> dict[str, Any] | None:
    """decode(), or None for a bad frame (logged): one garbled message is not worth a peer."""
    try:
        return decode(data)
    except ProtocolError as exc:
        log.warning("dropped malformed IPC message: %s", exc)
        return None


# Small constructors so both sides spell messages the same way.

def _cut(text: str | None, limit: int = MAX_FIELD_CHARS) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "…"


def hello(tenant_id: str, pid: int) -> dict[str, Any]:
    return {"type": "hello", "tenant_id": tenant_id, "pid": pid}


def heartbeat(
    state: str,
    mode: str | None,
    counters: dict[str, int],
    last_error: str | None,
    server_idle_age: float | None = None,
    quiet_for: float = 0.0,
) -> dict[str, Any]:
    message = {
        "type": "heartbeat",
        "state": state,
        "mode": mode,
        "counters": counters,
        "last_error": _cut(last_error),
        "server_idle_age": server_idle_age,
    }
    if quiet_for > 0:
        message["quiet_for"] = quiet_for
    return message


def processed(
    uid: int, uidvalidity: int, message_id: str | None, status: str, latency: float | None,
    skip_class: str | None = None,
) -> dict[str, Any]:
    message = {
        "type": "processed",
        "uid": uid,
        "uidvalidity": uidvalidity,
        "message_id": _cut(message_id),
        "status": status,
        "latency": latency,
    }
    if skip_class is not None:
        message["class"] = _cut(skip_class, 40)
    return message


def fatal(kind: str, reason: str) -> dict[str, Any]:
    return {"type": "fatal", "kind": kind, "reason": _cut(reason)}


def command_group(pgid: int | None, start: int | None) -> dict[str, Any]:
    return {"type": "command_group", "pgid": pgid, "start": start}


def stop() -> dict[str, Any]:
    return {"type": "stop"}


def replay() -> dict[str, Any]:
    return {"type": "replay"}
