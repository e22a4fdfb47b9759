"""Issue 22 item 4: a redelivered email's "already written?" check under the `jsonl` handler
reads a bounded amount of the shared file, whatever its size, and still never writes a line
twice nor loses one. What a call reads is measured by the kernel (/proc/self/io, rchar)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from tenant_proc.handlers import jsonl
from tests.handlers.test_handlers import _context, _email, lines_from_processes
from tests.servers.hostile_http import MB

OTHER_TENANTS = 48 * MB


def _redelivered(uid: int, tenant: str = "acme"):
    return dataclasses.replace(_email(uid, tenant), redelivered=True)


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _grow(path: Path, size: int) -> None:
    """Other companies' lines, appended as the handler would (one write per line)."""
    line = json.dumps({"tenant_id": "other", "folder": "INBOX", "uid": 1, "uidvalidity": 9,
                       "subject": "x" * 900}).encode() + b"\n"
    block = line * (MB // len(line))
    with path.open("ab") as out:
        for _ in range(size // len(block) + 1):
            out.write(block)


def _lines_of(path: Path, tenant: str, uid: int) -> int:
    needle = f'{{"tenant_id":"{tenant}","folder":"INBOX","uid":{uid},'.encode()
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.startswith(needle))


def test_a_redelivery_whose_line_is_there_reads_a_bounded_part_of_a_large_file(tmp_path):
    path = tmp_path / "emails.jsonl"
    context = _context(tmp_path, path=str(path))
    jsonl(_email(7), context)  # written; the process "dies" before recording it
    _grow(path, OTHER_TENANTS)  # every other company goes on meanwhile
    before = _bytes_read()
    jsonl(_redelivered(7), context)
    read = _bytes_read() - before
    assert read < 2 * MB, f"read {read / MB:.1f} MB of a {path.stat().st_size / MB:.0f} MB file"
    assert _lines_of(path, "acme", 7) == 1  # not written again


def test_a_redelivery_whose_line_never_made_it_is_written_once(tmp_path):
    path = tmp_path / "emails.jsonl"
    context = _context(tmp_path, path=str(path))
    _grow(path, OTHER_TENANTS)
    before = _bytes_read()
    jsonl(_redelivered(8), context)  # died before the handler wrote: nothing to find
    read = _bytes_read() - before
    assert read < 2 * MB, f"read {read / MB:.1f} MB of a {path.stat().st_size / MB:.0f} MB file"
    assert _lines_of(path, "acme", 8) == 1
    jsonl(_redelivered(8), context)  # and once written, found
    assert _lines_of(path, "acme", 8) == 1


def test_a_line_beyond_any_tail_is_still_found(tmp_path):
    """The bound is not a guess about how far back the line is: found however much followed."""
    path = tmp_path / "emails.jsonl"
    context = _context(tmp_path, path=str(path))
    jsonl(_email(9), context)
    _grow(path, 8 * MB)
    jsonl(_redelivered(9), context)
    assert _lines_of(path, "acme", 9) == 1


def test_a_rotated_file_gets_the_line_again(tmp_path):
    """The index says where the line was; a file moved away and begun anew no longer holds it
    there, so the redelivered email is written into the new file (nothing lost)."""
    path = tmp_path / "emails.jsonl"
    context = _context(tmp_path, path=str(path))
    jsonl(_email(3), context)
    os.rename(path, tmp_path / "emails.jsonl.1")
    for uid in range(100, 110):
        jsonl(_email(uid, "other"), context)
    jsonl(_redelivered(3), context)
    assert _lines_of(path, "acme", 3) == 1


def test_lines_written_before_the_index_existed_are_found_near_the_end(tmp_path):
    path = tmp_path / "emails.jsonl"
    context = _context(tmp_path, path=str(path))
    jsonl(_email(4), context)
    for suffix in ("", "-wal", "-shm"):  # as if written by a version without the index
        Path(f"{path}.index{suffix}").unlink(missing_ok=True)
    jsonl(_email(5, "other"), context)
    jsonl(_redelivered(4), context)
    assert _lines_of(path, "acme", 4) == 1


def _redeliver_many(path: str, tenant: str, count: int) -> None:
    context = _context(Path(path).parent, path=path)
    for uid in range(count):
        jsonl(_email(uid, tenant), context)
        jsonl(_redelivered(uid, tenant), context)  # each one comes back once, at once


def test_many_processes_redelivering_never_write_a_line_twice(tmp_path):
    path = tmp_path / "shared.jsonl"
    records = lines_from_processes(path, _redeliver_many, 100)
    assert len(records) == 400
    assert {(r["tenant_id"], r["uid"]) for r in records} == {(f"t{n}", u) for n in range(4) for u in range(100)}
    assert oct(os.stat(f"{path}.index").st_mode & 0o777) == "0o600"
