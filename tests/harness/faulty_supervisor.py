"""`python -m tests.harness.faulty_supervisor run --config ...`: the real supervisor with one test-only
fault. While the file named by $IDLE_TEST_FAIL_TICKS holds a number above 0, each pass of the
loop's housekeeping raises (and counts the number down): an exception inside one loop tick,
injected from outside the running process."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from supervisor.arbiter.arbiter import Arbiter
from supervisor.cli import main

_murder_hung = Arbiter.murder_hung


def _failing_murder_hung(self: Arbiter, now: float) -> None:
    path = Path(os.environ["IDLE_TEST_FAIL_TICKS"])
    try:
        left = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        left = 0
    if left > 0:
        path.write_text(str(left - 1))
        raise RuntimeError(f"injected tick failure ({left - 1} left)")
    _murder_hung(self, now)


Arbiter.murder_hung = _failing_murder_hung  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
