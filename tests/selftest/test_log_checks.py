"""The traceback check on supervisor logs (tests/harness/log_checks.py, tests/conftest.py) can fail."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.harness.log_checks import find_tracebacks

REPO_ROOT = Path(__file__).resolve().parents[2]

LOG_WITH_TRACEBACK = """\
2026-12-02T00:00:00Z INFO [Acme AB] IDLE active
2026-12-02T00:00:01Z ERROR [Acme AB] handler raised
Traceback (most recent call last):
  File "/app/tenant_proc/mailbox.py", line 1, in _handle
    self.handler(email)
ValueError: boom
2026-12-02T00:00:02Z INFO [Acme AB] IDLE active
"""


def test_a_traceback_is_found_with_what_led_to_it():
    (excerpt,) = find_tracebacks(LOG_WITH_TRACEBACK)
    assert "handler raised" in excerpt and "ValueError: boom" in excerpt


def test_a_broken_log_call_and_a_json_exc_field_are_found():
    assert len(find_tracebacks("--- Logging error ---\nTypeError: not all arguments converted\n")) == 1
    json_line = '{"level": "ERROR", "exc": "Traceback (most recent call last):\\n  File ..."}'
    assert len(find_tracebacks(json_line)) == 1


def test_the_one_line_reports_of_an_unhandled_exception_count_too():
    log = ("ERROR [Acme AB] crashed: ValueError: boom at store.py:81 in __init__\n"
           "INFO [Acme AB] started (pid 12)\n"
           "ERROR loop tick failed: RuntimeError: x at arbiter.py:12 in tick\n")
    assert len(find_tracebacks(log)) == 1  # one excerpt: the second is within the first's lines
    assert len(find_tracebacks("ERROR loop tick failed: RuntimeError: x\n")) == 1


def test_expected_failures_are_not_tracebacks():
    clean = ("WARNING [Acme AB] crashed with exit code 1; restarting in 1s\n"  # the parent's view
             "WARNING [Acme AB] handler failed on uid 3 (attempt 1/5): ValueError: no\n"
             "ERROR [Acme AB] failed: auth: login failed for acme at 127.0.0.1:993\n")
    assert find_tracebacks(clean) == []


def test_conftest_fails_a_passing_test_whose_supervisor_log_has_a_traceback(tmp_path):
    """Through pytest itself: the conftest hooks turn a traceback in a SupervisorRun's log into a
    failure, and allow_traceback(reason) is the only way out."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import (pytest_addoption, pytest_configure,  # noqa: F401\n"
        "                            pytest_runtest_makereport, pytest_runtest_setup)\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f'''
        import pytest
        from tests.harness.supervisor_run import SupervisorRun

        LOG = {LOG_WITH_TRACEBACK!r}

        def _run_with_log(path, text):
            run = SupervisorRun(path, dovecot=None, tenants=[])
            run.log_path.write_text(text)

        def test_traceback(tmp_path):
            _run_with_log(tmp_path, LOG)

        def test_failing_with_a_traceback(tmp_path):
            _run_with_log(tmp_path, LOG)
            assert False, "fails on its own"

        def test_clean(tmp_path):
            _run_with_log(tmp_path, "INFO all good\\n")

        @pytest.mark.allow_traceback("the traceback is the behaviour under test")
        def test_allowed(tmp_path):
            _run_with_log(tmp_path, LOG)

        @pytest.mark.allow_traceback()
        def test_allowed_without_reason(tmp_path):
            _run_with_log(tmp_path, LOG)
    '''))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", "--rootdir", str(tmp_path),
         "--basetemp", str(tmp_path / "base"), "--supervisor-logs", str(tmp_path / "kept"),
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    out = result.stdout
    assert result.returncode == 1, out
    errors = {line.split()[1] for line in out.splitlines() if line.startswith("ERROR ")}
    assert errors == {"test_inner.py::test_traceback", "test_inner.py::test_allowed_without_reason"}, out
    assert "reason: why is a traceback right here?" in out, out
    assert "1 traceback(s) or crash line(s) in the supervisor log(s)" in out and "ValueError: boom" in out, out
    assert "FAILED test_inner.py::test_failing_with_a_traceback" in out, out  # once, not also an ERROR
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert len(kept) == 5 and all(name.endswith(".1.log") for name in kept), kept
