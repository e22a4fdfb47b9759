"""When the tenant noticed new mail: the start of each email's latency clock."""
from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Notice:
    """When the tenant noticed new mail: the start of the latency clock."""

    wall: float
    mono: float

    @classmethod
    def now(cls) -> "Notice":
        return cls(time.time(), time.monotonic())
