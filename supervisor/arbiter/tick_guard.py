"""Containing a failing loop tick: one bad tick is logged and survived, a repeating one ends
the supervisor cleanly.

Before this, an exception anywhere in one tick ended the supervisor and its last-resort
cleanup SIGKILLed every tenant, mid-email. Most such failures are one-offs (a surprising
value in one tenant's row, an OSError from one syscall) and the other tenants are fine: the
loop logs one line and goes on. A failure that keeps coming back is not going away: the
arbiter then stops every tenant gracefully and exits non-zero, so systemd or the platform
restarts it from a clean state.
"""
from __future__ import annotations

from collections import deque

from tenant_proc.logs import describe_exception

FAILED_TICK_LIMIT = 5  # this many failed ticks ...
FAILED_TICK_WINDOW = 60.0  # ... within this many seconds: stop and exit
FAILED_TICK_PAUSE = 0.1  # after a failed tick: a tick failing at once must not spin a core
EXIT_LOOP_FAILED = 1


class TickFailures:
    def __init__(self, limit: int = FAILED_TICK_LIMIT, window: float = FAILED_TICK_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self.times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Count one failure at monotonic `now`; True when that makes too many in the window."""
        self.times.append(now)
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        return len(self.times) >= self.limit


def describe(exc: BaseException) -> str:
    """One line: the exception and where it was raised (the innermost frame), no traceback;
    the same line a tenant process logs when it crashes."""
    return describe_exception(exc)
