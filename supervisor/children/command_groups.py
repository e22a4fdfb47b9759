"""Killing what a dead tenant's `command` handler left running.

The tenant starts each program as the leader of its own process group and tells us (IPC
`command_group`: pgid and the leader's start time) until it ends. The kernel kills the leader
with the tenant (parent-death signal), but not the rest of the group: a background child or a
daemonised script would run on with no one to stop it. So when we collect a tenant that died
with a group still reported, we kill that group.

Pid reuse: a pid cannot be handed out again while a process group of that number has members
(Linux keeps the number alive), so if process <pgid> exists with another start time, our group
is already empty and nothing is killed; if it exists with the reported start time it is still
our leader; if it does not exist, the group's members (if any) are still ours.
"""
from __future__ import annotations

import logging
import os
import signal
from typing import Any

from ipc import procstat

log = logging.getLogger("supervisor")


def reported_group(message: dict[str, Any]) -> tuple[int, int | None] | None:
    """The (pgid, start) of a `command_group` message; None when it ended or makes no sense
    (never our own group, never pid 0/1: a killpg there would hit the supervisor itself)."""
    pgid, start = message.get("pgid"), message.get("start")
    if not isinstance(pgid, int) or isinstance(pgid, bool) or pgid <= 1 or pgid == os.getpgrp():
        return None
    return pgid, start if isinstance(start, int) and not isinstance(start, bool) else None


def kill_orphaned_group(name: str, group: tuple[int, int | None]) -> bool:
    """SIGKILL the dead tenant's command group unless its number now belongs to someone else."""
    pgid, start = group
    now_start = procstat.start_ticks(pgid)
    if now_start is not None and start is not None and now_start != start:
        return False  # pid reused: our group had emptied before
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False  # already gone
    log.warning("[%s] killed process group %d its command handler left running", name, pgid)
    return True
