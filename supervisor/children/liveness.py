"""Is a quiet tenant asleep? One read of /proc/PID/stat in place of the heartbeats it skips.

A tenant waiting on its server with nothing new beats every idle_heartbeat_interval, not every
heartbeat_interval (at 1,000 tenants the 5 s beats were most of the idle CPU). Its silence is
then only trusted while the kernel agrees: the process must not be stopped (SIGSTOP, a
debugger) and must not be burning CPU, which an idle process does not do. So a stopped or
spinning tenant is still killed about heartbeat_timeout after its last beat, as before.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
STOPPED_STATES = frozenset("Tt")  # stopped by a signal / by a tracer
# An idling tenant uses well under 1% of a core; one that keeps half a core busy between two
# probes is looping somewhere, whatever it says.
SPINNING_SHARE = 0.5


@dataclass(frozen=True)
class ProcSample:
    at: float  # monotonic
    state: str  # /proc/PID/stat field 3: R, S, D, T, t, Z...
    cpu_seconds: float  # user + system


def sample(pid: int, now: float) -> ProcSample | None:
    """None when the process is gone (its exit sentinel reports that) or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return ProcSample(now, fields[0].decode(), (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND)
    except (IndexError, ValueError):
        return None


def why_not_asleep(previous: ProcSample | None, current: ProcSample | None) -> str | None:
    """A reason this quiet process is not really idle, or None if it looks fine."""
    if current is None:
        return None
    if current.state in STOPPED_STATES:
        return "it is stopped"
    if previous is not None and current.at > previous.at:
        share = (current.cpu_seconds - previous.cpu_seconds) / (current.at - previous.at)
        if share >= SPINNING_SHARE:
            return f"it used {share:.0%} of a core without reporting"
    return None
