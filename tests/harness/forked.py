"""Forked child processes for tests that must look at a fresh process, as a tenant is one."""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Callable, Iterator


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
