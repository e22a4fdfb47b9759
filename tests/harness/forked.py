"""Forked child processes for tests that must look at a fresh process, as a tenant is one."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from typing import Any, Callable, Iterator


def run_in_fresh_process(work: Callable[[], str]) -> str:
    """Run work() in a forked child and return the text it returned; fails unless it exits 0."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, work().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        text = report.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed"
    return text


def peak_rss_growth(work: Callable[[], Any], warmup: Callable[[], Any] | None = None) -> tuple[int, str]:
    """Run work() in a forked child, as a tenant is one: (how far its peak resident memory
    rose above what it had at the start, in bytes; what work returned or raised, as text).

    The kernel resets the peak (VmHWM) of a forked child to its resident size at the fork, so
    the growth is work()'s alone, whatever the test process held before. warmup() runs first,
    unmeasured: the same work done the ordinary way, so that importing libraries and loading
    trust stores on first use do not count as work()'s."""

    def measured() -> str:
        if warmup is not None:
            warmup()
        before = _peak_rss()
        try:
            outcome = repr(work())
        except Exception as exc:  # what the product raised is part of the answer
            outcome = f"{type(exc).__name__}: {exc}"
        return json.dumps([_peak_rss() - before, outcome])

    growth, outcome = json.loads(run_in_fresh_process(measured))
    return growth, outcome


def _peak_rss() -> int:
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1)) * 1024  # type: ignore[union-attr]


@contextlib.contextmanager
def running(body: Callable[[], None]) -> Iterator[int]:
    """A child running body() for as long as the with block lasts (then SIGKILLed, reaped)."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    try:
        yield pid
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
