"""A process's identity beyond its pid: its start time (/proc/PID/stat field 22, clock ticks
since boot). Both sides read it: the tenant reports the command it started as (pgid, start),
and the supervisor checks that pid against it before it kills that group (pids are reused)."""
from __future__ import annotations


def start_ticks(pid: int) -> int | None:
    """The start time of process `pid`, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) is in parentheses and may hold spaces or ')': split after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)
