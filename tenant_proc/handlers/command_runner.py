"""The `command` handler: run a program per email, raw message on stdin.

What the program gets, and what it cannot get:
- A minimal environment, never the tenant's own: PATH, HOME, LANG, LC_*, TZ and TMPDIR (what
  ordinary programs need to find tools, write temp files and read text), the IDLE_* variables
  describing the email, and only the further variables named in `env = ["NAME", ...]`. The
  tenant's environment holds SUPABASE_SERVICE_ROLE_KEY and every tenant's password_env
  variable: none of them is passed unless listed.
- Its own process group, killed whole on timeout or when the tenant stops. When the tenant
  process dies, even by SIGKILL, the kernel kills the program itself (parent-death signal) and
  the supervisor the rest of its group (what it started in the background; a child that
  calls setsid has left the group and is beyond reach): the group is reported to it
  (context.track_process_group) while the program runs.
- `timeout` defaults to DEFAULT_COMMAND_TIMEOUT, below the default heartbeat_timeout (30 s);
  while it runs the tenant keeps beating (context.keepalive), so a longer, explicitly
  configured timeout is slow work, not a hang.
- Its output costs the tenant at most 64 KB: stdout goes nowhere, of stderr the last 64 KB are
  kept (for the error line) and the rest is read and dropped (tenant_proc/process/pipes.py).
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
from typing import Any

from tenant_proc.handlers.loader import HandlerContext
from tenant_proc.message import Email
from tenant_proc.process.pipes import exchange

DEFAULT_COMMAND_TIMEOUT = 20.0
BASE_ENV = ("PATH", "HOME", "LANG", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_ENV_VALUE_CHARS = 4096
PR_SET_PDEATHSIG = 1


def command(email: Email, context: HandlerContext) -> None:
    """Run options["argv"] with the raw message on stdin; a non-zero exit retries the email."""
    argv = _argv(context.options)
    timeout = float(context.options.get("timeout", DEFAULT_COMMAND_TIMEOUT))
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=command_env(email, context.options, os.environ), cwd=context.base_dir,
        process_group=0, preexec_fn=functools.partial(_die_with_parent, os.getpid()),
    )
    try:
        context.track_process_group(proc.pid)
        stderr = exchange(proc, email.raw, timeout, context.keepalive).stderr
    finally:
        _kill_group(proc, context)  # whatever it left running in its group goes with it
    if proc.returncode != 0:
        detail = stderr.decode("utf-8", "replace").strip().splitlines()
        tail = f": {detail[-1][:200]}" if detail else ""
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}{tail}")


def command_env(email: Email, options: dict[str, Any], environ: Any) -> dict[str, str]:
    allowed = options.get("env", ())
    if not isinstance(allowed, (list, tuple)) or not all(isinstance(n, str) for n in allowed):
        raise ValueError('command handler option env must be a list of variable names, e.g. env = ["MY_TOKEN"]')
    env = {name: environ[name] for name in BASE_ENV if name in environ}
    env.update({name: value for name, value in environ.items() if name.startswith("LC_")})
    env.setdefault("PATH", DEFAULT_PATH)
    env.update({name: environ[name] for name in allowed if name in environ})
    env.update(
        IDLE_TENANT_ID=email.tenant_id,
        IDLE_UID=str(email.uid),
        IDLE_UIDVALIDITY=str(email.uidvalidity),
        IDLE_MESSAGE_ID=_env_value(email.message_id or ""),
        IDLE_FOLDER=email.folder,
        IDLE_REDELIVERED="1" if email.redelivered else "",  # may already have been handled
        IDLE_AUTO=email.auto or "",  # bounce, auto_reply, ...: never answer those
        IDLE_IN_REPLY_TO=_env_value(email.in_reply_to or ""),
    )
    return env


def _argv(options: dict[str, Any]) -> list[str]:
    argv = options.get("argv")
    # A tuple when it comes from the config file: specs are frozen so reloads can compare them.
    if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("command handler needs options argv = [program, args...]")
    return list(argv)


def _env_value(text: str) -> str:
    """The kernel refuses NUL in a variable (and anything over 128 KiB): a Message-ID (or an
    In-Reply-To) that decodes to one must not fail the email on every attempt."""
    return text.replace("\x00", "")[:MAX_ENV_VALUE_CHARS]


def _kill_group(proc: subprocess.Popen[bytes], context: HandlerContext) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    # Untracked before the leader is reaped: until then its pid cannot be reused, so nobody
    # (the supervisor, our own exit path) can ever kill a group that is no longer this one.
    context.track_process_group(None)
    proc.wait()


def _die_with_parent(tenant_pid: int) -> None:
    """In the forked child, before exec: SIGKILL when the tenant dies, however it dies.

    The signal is armed for the parent of the moment: a tenant that died between the fork and
    the prctl has already gone, the kernel never sends it, and the program would run on as an
    orphan. So the parent is checked again after arming: no longer the tenant, die now."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != tenant_pid:
        os.kill(os.getpid(), signal.SIGKILL)
