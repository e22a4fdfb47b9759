"""At most [imap] max_logins_per_hour logins per tenant process in any sliding hour.

Backoff alone is not a bound: a server that accepts LOGIN and then refuses or breaks every
session gets a backoff that keeps resetting. Whatever the server does, the tenant's logins
stay under this budget; a process restart starts a new budget, and restarts are bounded by
the supervisor's restart policy.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

HOUR = 3600.0


class LoginBudget:
    def __init__(self, per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour = per_hour
        self.clock = clock
        self._logins: deque[float] = deque()

    def wait_needed(self) -> float:
        """Seconds until the next login fits the budget (0: now)."""
        now = self.clock()
        while self._logins and self._logins[0] <= now - HOUR:
            self._logins.popleft()
        if self.per_hour <= 0 or len(self._logins) < self.per_hour:
            return 0.0
        return self._logins[0] + HOUR - now

    def spend(self) -> None:
        self._logins.append(self.clock())
