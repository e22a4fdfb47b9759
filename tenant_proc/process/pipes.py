"""Feeding and draining a child program's pipes: one deadline, heartbeats, bounded memory.

subprocess.communicate() keeps every byte a program writes until it ends: 64 MB on stderr grew
a company process by 192 MB (the chunks, their join, the decoded text). exchange() keeps at most
KEPT_BYTES of each output and reads and drops the rest, so a chatty program neither blocks on a
full pipe nor grows the company process: of stdout the first bytes (what a token command
prints), of stderr the last (where a program says what went wrong). While it waits, it calls
keepalive() at least every second, so slow but healthy work is not taken for a hang.

Used by the `command` handler (handlers/command_runner.py) and the token command
(signin/providers/command.py).
"""
from __future__ import annotations

import os
import select
import selectors
import subprocess
import time
from dataclasses import dataclass
from typing import IO, Callable

KEPT_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
SLICE = 1.0  # seconds between keepalive() calls while the program runs
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)  # a write this small never blocks a writable pipe


@dataclass(frozen=True)
class Output:
    stdout: bytes  # its first KEPT_BYTES (b"" when not a pipe)
    stderr: bytes  # its last KEPT_BYTES


class _Kept:
    """What is kept of one output stream: its head or its tail, never more than `limit` bytes."""

    def __init__(self, limit: int, tail: bool) -> None:
        self.limit = limit
        self.tail = tail
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        if not self.tail:
            self.data += chunk[: self.limit - len(self.data)]
            return
        self.data += chunk
        if len(self.data) > 2 * self.limit:  # trimmed now and then, not on every chunk
            del self.data[: -self.limit]

    def value(self) -> bytes:
        return bytes(self.data[-self.limit:] if self.tail else self.data)


def exchange(proc: subprocess.Popen[bytes], stdin: bytes | None, timeout: float,
             keepalive: Callable[[], None], keep: int = KEPT_BYTES) -> Output:
    """Write stdin (then close it), drain stdout and stderr until both end, wait for the exit.

    Raises subprocess.TimeoutExpired once timeout seconds have passed, the program still running
    or its pipes still open (the caller kills it). Every pipe is closed when this returns."""
    deadline = time.monotonic() + timeout
    kept = {proc.stdout: _Kept(keep, tail=False), proc.stderr: _Kept(keep, tail=True)}
    pending = memoryview(stdin or b"")
    try:
        with selectors.DefaultSelector() as selector:
            if proc.stdin is not None:
                if pending:
                    selector.register(proc.stdin, selectors.EVENT_WRITE)
                else:
                    proc.stdin.close()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    selector.register(stream, selectors.EVENT_READ)
            while selector.get_map():
                left = _left(deadline, proc, timeout)
                for key, _ in selector.select(min(SLICE, left)):
                    stream = key.fileobj
                    if stream is proc.stdin:
                        pending = _feed(selector, proc.stdin, pending)
                    else:
                        chunk = os.read(key.fd, READ_CHUNK)
                        if chunk:
                            kept[stream].add(chunk)
                        else:
                            selector.unregister(stream)
                            stream.close()  # type: ignore[union-attr]
                keepalive()
        while True:
            try:
                proc.wait(min(SLICE, _left(deadline, proc, timeout)))
                break
            except subprocess.TimeoutExpired:
                keepalive()
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return Output(kept[proc.stdout].value() if proc.stdout else b"",
                  kept[proc.stderr].value() if proc.stderr else b"")


def _feed(selector: selectors.BaseSelector, pipe: IO[bytes], pending: memoryview) -> memoryview:
    """Write the next piece of stdin; close it when all is written or the program stopped reading."""
    try:
        written = os.write(pipe.fileno(), pending[:_PIPE_BUF])
    except BrokenPipeError:  # the program does not read its input: not an error of ours
        written = len(pending)
    pending = pending[written:]
    if not pending:
        selector.unregister(pipe)
        pipe.close()
    return pending


def _left(deadline: float, proc: subprocess.Popen[bytes], timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return left
