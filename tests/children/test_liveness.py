"""The /proc check that stands in for a quiet tenant's skipped heartbeats, on real processes."""
from __future__ import annotations

import ctypes
import os
import signal
import time

from supervisor.children import liveness
from tests.harness.forked import running


def _sleep_forever() -> None:
    while True:
        time.sleep(60)


def _spin() -> None:
    while True:
        pass


def test_a_sleeping_process_looks_asleep():
    with running(_sleep_forever) as pid:
        time.sleep(0.2)
        first = liveness.sample(pid, time.monotonic())
        time.sleep(0.5)
        second = liveness.sample(pid, time.monotonic())
        assert first is not None and second is not None and second.state == "S"
        assert liveness.why_not_asleep(first, second) is None


def test_a_stopped_process_is_reported_stopped():
    with running(_sleep_forever) as pid:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.2)
        current = liveness.sample(pid, time.monotonic())
        assert current is not None and current.state == "T"
        assert liveness.why_not_asleep(None, current) == "it is stopped"


def test_a_spinning_process_is_reported_busy():
    with running(_spin) as pid:
        time.sleep(0.2)
        first = liveness.sample(pid, time.monotonic())
        time.sleep(1.0)
        second = liveness.sample(pid, time.monotonic())
        reason = liveness.why_not_asleep(first, second)
        assert reason is not None and "of a core without reporting" in reason
        assert liveness.why_not_asleep(None, second) is None  # one sample cannot tell


def test_a_gone_process_is_left_to_its_exit_sentinel():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert liveness.sample(pid, time.monotonic()) is None
    assert liveness.why_not_asleep(None, None) is None


def test_a_command_name_with_spaces_and_parentheses_parses():
    def named_sleeper() -> None:
        libc = ctypes.CDLL(None)
        libc.prctl(15, b"x) R 1 (y", 0, 0, 0)  # PR_SET_NAME: a comm that looks like fields
        _sleep_forever()

    with running(named_sleeper) as pid:
        time.sleep(0.2)
        assert ") R 1 (" in open(f"/proc/{pid}/stat").read()
        sample = liveness.sample(pid, time.monotonic())
        assert sample is not None and sample.state == "S" and sample.cpu_seconds >= 0
