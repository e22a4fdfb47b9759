"""return_free_memory() gives a process's freed heap back to the kernel (its USS drops)."""
from __future__ import annotations

import os

from tenant_proc.memory import return_free_memory


def _private_kib() -> int:
    total = 0
    with open("/proc/self/smaps_rollup", "rb") as rollup:
        for line in rollup:
            if line.startswith((b"Private_Dirty", b"Private_Clean")):
                total += int(line.split()[1])
    return total


def _freed_heap_is_returned() -> tuple[int, int, bool]:
    # 20 MB in 4 KiB chunks: malloc'ed from the heap (not mmap), like TLS and SQLite buffers.
    chunks = [bytearray(4096) for _ in range(5000)]
    pinned = bytearray(4096)  # allocated last: the free space below it cannot be trimmed off the top
    del chunks
    before = _private_kib()
    returned = return_free_memory()
    after = _private_kib()
    del pinned
    return before, after, returned


def test_freed_heap_pages_stop_counting_as_the_process_own():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a fresh process, like a tenant: the test process's heap is not ours to judge
        code = 1
        try:
            before, after, returned = _freed_heap_is_returned()
            os.write(write_end, f"{before} {after} {int(returned)}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    report = os.read(read_end, 100).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    before, after, returned = (int(v) for v in report.split())
    assert returned == 1
    assert before - after > 15 * 1024, (before, after)  # most of the 20 MB is given back
