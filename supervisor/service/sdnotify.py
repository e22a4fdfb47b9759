"""sd_notify(3) without a library: one datagram per message to $NOTIFY_SOCKET.

Only the supervisor (the unit's main pid, NotifyAccess=main) talks to systemd. The arbiter calls
forget_notify_socket() before it forks anything, so children never inherit NOTIFY_SOCKET (a child
that sent READY=1 or STOPPING=1 would confuse systemd); this module keeps the value for the parent.
Every function is a silent no-op returning False when not started by systemd (Railway, a shell).
"""
from __future__ import annotations

import logging
import os
import socket
import time

# The logger keeps the name it had before the module moved into service/: operators filter on it.
log = logging.getLogger("supervisor.sdnotify")

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_saved: dict[str, str] = {}  # values taken out of os.environ by forget_notify_socket()
_sock: socket.socket | None = None  # one socket for the process lifetime, created lazily
_SEND_TIMEOUT = 1.0  # a full receive queue must not wedge the main loop for long


def _env(key: str) -> str | None:
    return os.environ.get(key) or _saved.get(key)


def _address() -> str | None:
    value = _env("NOTIFY_SOCKET")
    if not value:
        return None
    if value[0] == "@":  # abstract namespace: the name starts with a NUL byte
        return "\0" + value[1:]
    if value[0] == "/":
        return value
    return None  # e.g. "vsock:..." (systemd 254+ for VMs): not something we run under


def enabled() -> bool:
    """True when there is a notify socket to talk to (lets callers skip building STATUS text)."""
    return _address() is not None


def notify(message: str) -> bool:
    """Send one datagram; False (never an exception) when unset or when sending fails."""
    global _sock
    address = _address()
    if address is None:
        return False
    try:
        if _sock is None:
            # Python sockets are non-inheritable (close-on-exec) by default: nothing exec'd by a
            # handler sees it; forked children close their copy in _after_fork_in_child().
            _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sock.settimeout(_SEND_TIMEOUT)
        _sock.sendto(message.encode("utf-8"), address)
        return True
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message.split("\n", 1)[0], exc)
        return False


def ready() -> bool:
    return notify("READY=1")


def reloading() -> bool:
    # systemd 253+ (Type=notify-reload) wants MONOTONIC_USEC with RELOADING=1 to order the
    # reload against its own clock; older versions ignore the extra field.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    # One line only: a newline would start a new KEY=VALUE assignment.
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as sd_watchdog_enabled advises),
    or None when the watchdog is off or meant for another pid."""
    pid = _env("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(_env("WATCHDOG_USEC") or "0")
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


def forget_notify_socket() -> None:
    """Take NOTIFY_SOCKET (and WATCHDOG_*) out of os.environ, keeping them for this process only.

    Call before the first fork: a fork copies os.environ, and anything a child execs would
    otherwise inherit the socket path.
    """
    for key in _ENV_KEYS:
        value = os.environ.pop(key, None)
        if value:
            _saved[key] = value


def close() -> None:
    """Close the socket and drop saved values (a forked child; tests switching sockets)."""
    global _sock
    if _sock is not None:
        _sock.close()
        _sock = None
    _saved.clear()


def _after_fork_in_child() -> None:
    # Defence in depth for rule 3.5: whatever the child's bootstrap does, it cannot notify.
    close()
    for key in _ENV_KEYS:
        os.environ.pop(key, None)


os.register_at_fork(after_in_child=_after_fork_in_child)
