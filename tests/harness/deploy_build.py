"""Build the product the way a platform would: from a clean copy of the tracked files, into a
fresh virtualenv, with no extras and nothing from the development .venv.

Shared by tests/deploy/test_railway.py (Railpack's steps) and tests/deploy/test_container.py (the Dockerfile).
The fresh pip install downloads from the package index; nothing is cached in the repository.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 900  # a fresh install of supabase-py and its tree on a busy 2-core machine


def clean_copy(dest: Path) -> Path:
    """The tracked files as they are in the work tree (what a fresh clone of this commit holds)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    dest.mkdir(parents=True)
    for name in filter(None, listed):
        src = REPO_ROOT / name
        if not src.is_file():  # deleted in the work tree, not yet committed
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


def base_python(version: str) -> str:
    """The real interpreter (not a pyenv shim, not the development venv) of the pinned version."""
    base = getattr(sys, "_base_executable", sys.executable)
    for candidate in (shutil.which(f"python{version}"), base):
        if not candidate:
            continue
        out = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2], sys._base_executable)"],
            capture_output=True, text=True, timeout=60)
        found, _, real = out.stdout.strip().partition(" ")
        if out.returncode == 0 and found == version:
            return real
    raise RuntimeError(f"no python{version} on this machine")


def builder_env(**extra: str) -> dict[str, str]:
    """A minimal environment: nothing of the developer's (no PYTHONPATH, no venv on PATH)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def add_company(db: Any, dovecot: Any, cid: str) -> None:
    """A Dovecot user and its companies row (name "<Cid> AB", TLS on the imaps port)."""
    dovecot.add_user(cid, f"{cid}-pw")
    db.execute("INSERT INTO companies (id, name, imap_host, imap_port, imap_security, "
               "imap_username, imap_password) VALUES (%s, %s, '127.0.0.1', %s, 'tls', %s, %s)",
               (cid, f"{cid.title()} AB", dovecot.imaps_port, cid, f"{cid}-pw"))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               logs: Callable[[], str] = lambda: "",
               proc: subprocess.Popen | None = None) -> Any:
    """predicate()'s first truthy value within timeout; fails at once if proc has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the deployment exited ({proc.returncode}) waiting for {what}\n"
                                 f"{logs()[-3000:]}")
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs()[-3000:]}")
