"""return_free_memory() gives a process's freed heap back to the kernel (its USS drops)."""
from __future__ import annotations

from tenant_proc.process.memory import return_free_memory
from tests.harness.forked import run_in_fresh_process


def _private_kib() -> int:
    total = 0
    with open("/proc/self/smaps_rollup", "rb") as rollup:
        for line in rollup:
            if line.startswith((b"Private_Dirty", b"Private_Clean")):
                total += int(line.split()[1])
    return total


def _freed_heap_is_returned() -> str:
    # 20 MB in 4 KiB chunks: malloc'ed from the heap (not mmap), like TLS and SQLite buffers.
    chunks = [bytearray(4096) for _ in range(5000)]
    pinned = bytearray(4096)  # allocated last: the free space below it cannot be trimmed off the top
    del chunks
    before = _private_kib()
    returned = return_free_memory()
    after = _private_kib()
    del pinned
    return f"{before} {after} {int(returned)}"


def test_freed_heap_pages_stop_counting_as_the_process_own():
    # A fresh process, like a tenant: the test process's heap is not ours to judge.
    report = run_in_fresh_process(_freed_heap_is_returned)
    before, after, returned = (int(v) for v in report.split())
    assert returned == 1
    assert before - after > 15 * 1024, (before, after)  # most of the 20 MB is given back
