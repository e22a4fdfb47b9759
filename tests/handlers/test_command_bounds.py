"""Issue 22 items 3 and 12: the `command` handler's program costs the tenant at most 64 KB of
output, whatever it writes, and never outlives a tenant that died as it was being started."""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tenant_proc.handlers import command
from tests.handlers.test_handlers import _context, _email
from tests.harness.forked import peak_rss_growth, run_in_fresh_process
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.hostile_http import MB
from tests.servers.imap.mail_helpers import make_message

# 64 MB on stderr in 64 KB writes, then the line that says what went wrong.
CHATTY = ("import sys; w = sys.stderr.buffer; sys.stdin.buffer.read()\n"
          "for _ in range(1024): w.write(b'noise ' * 10922 + b'\\n')\n"
          "w.write(b'the real reason\\n'); sys.exit(int(sys.argv[1]))")
PR_SET_CHILD_SUBREAPER = 36


def test_64_mb_on_stderr_costs_the_tenant_at_most_a_little(tmp_path):
    """The review saw 64 MB on stderr grow the process by 192 MB."""
    context = _context(tmp_path, argv=[sys.executable, "-c", CHATTY, "3"], timeout=60)
    quiet = _context(tmp_path, argv=["true"])
    growth, outcome = peak_rss_growth(lambda: command(_email(), context),
                                      warmup=lambda: command(_email(), quiet))
    # The last line is still the error's: stderr's tail is what is kept.
    assert outcome.startswith("RuntimeError") and outcome.endswith("exited with 3: the real reason"), outcome
    assert growth < 4 * MB, f"the process grew by {growth / MB:.1f} MB"


def test_a_large_message_still_reaches_a_program_that_reads_it(tmp_path):
    out = tmp_path / "stdin.bin"
    raw = b"Subject: big\r\n\r\n" + b"y" * (3 * MB)
    email = _email()
    email = type(email)(**{**email.__dict__, "raw": raw, "size": len(raw)})
    command(email, _context(tmp_path, argv=["sh", "-c", f"cat > {out}; echo done >&2"]))
    assert out.read_bytes() == raw


def test_a_program_that_ignores_its_stdin_is_not_a_failure(tmp_path):
    email = _email()
    raw = b"x" * (2 * MB)  # more than a pipe holds: the program exits without reading it
    command(type(email)(**{**email.__dict__, "raw": raw}), _context(tmp_path, argv=["true"]))


def _tenant_vm_hwm(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


@pytest.mark.integration
def test_a_chatty_program_does_not_grow_the_tenant_process(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    handler = {"target": "tenant_proc.handlers:command", "timeout": 60,
               "argv": [sys.executable, "-c", CHATTY, "0"]}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")],
                       handler=handler).start() as run:
        tenant_pid = run.tenant("acme")["pid"]
        run.wait_for(lambda s: s["tenants"]["acme"]["state"] == "idle", 20, "idle")
        before = _tenant_vm_hwm(tenant_pid)
        rss_before = psutil.Process(tenant_pid).memory_info().rss
        dovecot.deliver("acme", make_message("for a chatty program"))
        run.wait_for(lambda s: s["tenants"]["acme"]["processed"] == 1, 60, "processed")
        assert run.tenant("acme")["pid"] == tenant_pid
        growth = _tenant_vm_hwm(tenant_pid) - before
        rss_growth = psutil.Process(tenant_pid).memory_info().rss - rss_before
    assert growth < 16 * MB, f"the tenant's peak grew by {growth / MB:.1f} MB"
    assert rss_growth < 16 * MB, f"the tenant grew by {rss_growth / MB:.1f} MB"


def _orphan_survives() -> str:
    """A tenant (here: a fresh process P) starts the program and dies before the program's
    child side arms its parent-death signal: does the program run on?

    This process becomes a subreaper, so the orphaned program is reparented to it and can be
    watched and reaped. P takes the very preexec function the handler gives Popen, forks the
    program's side, and exits; the program's side waits until P is gone, then runs it and execs
    `sleep 30`, as subprocess would."""
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    ready_read, ready_write = os.pipe()
    tenant = os.fork()
    if tenant == 0:
        captured: dict[str, object] = {}

        def capture(*args: object, **kwargs: object) -> object:
            captured.update(kwargs)
            raise RuntimeError("captured")  # stop command() before it starts anything

        subprocess.Popen = capture  # type: ignore[misc,assignment]
        try:
            command(_email(), _context(Path("/tmp"), argv=["sleep", "30"]))
        except RuntimeError:
            pass
        preexec = captured["preexec_fn"]
        tenant_pid = os.getpid()
        program = os.fork()
        if program == 0:
            while os.getppid() == tenant_pid:  # the tenant dies first: the race of item 12
                time.sleep(0.01)
            preexec()  # type: ignore[operator]
            os.execvp("sleep", ["sleep", "30"])
        os.write(ready_write, str(program).encode())
        os._exit(0)
    os.close(ready_write)
    program = int(os.read(ready_read, 64))
    os.waitpid(tenant, 0)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if os.waitpid(program, os.WNOHANG)[0]:
            return "gone"
        time.sleep(0.05)
    os.kill(program, signal.SIGKILL)
    os.waitpid(program, 0)
    return "survived"


def test_a_program_started_as_its_tenant_dies_does_not_run_on():
    assert run_in_fresh_process(_orphan_survives) == "gone", "the program outlived its tenant"


def test_a_program_whose_tenant_lives_runs(tmp_path):
    out = tmp_path / "ran"
    command(_email(), _context(tmp_path, argv=["sh", "-c", f"echo ok > {out}"]))
    assert out.read_text().strip() == "ok"
