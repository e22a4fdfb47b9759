"""provider = "command": a program prints the access token (any other IdP, a secret manager).

Run as an argv list (no shell), within token_timeout as a whole, in its own process group
(killed whole on a timeout), with a minimal environment: PATH, HOME, LANG plus IDLE_TENANT_ID,
IDLE_USERNAME and IDLE_OAUTH_SCOPE; never the supervisor's secrets. The tenant beats while it
runs (keepalive) and keeps at most 64 KB of each output (tenant_proc/process/pipes.py). Its
stdout is either the bare token (one line; lifetime assumed an hour) or JSON
{"access_token": ..., "expires_in": ...}. Exit status 75 (EX_TEMPFAIL) means "try again later";
any other failure needs the operator.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Callable

from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.process.pipes import exchange
from tenant_proc.signin import errors
from tenant_proc.signin.providers.base import DEFAULT_LIFETIME, TokenResponse
from tenant_proc.signin.providers.http import parse_answer
from tenant_proc.spec import Secret, TenantSpec

EX_TEMPFAIL = 75
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


def fetch(spec: TenantSpec, keepalive: Callable[[], None] = lambda: None) -> TokenResponse:
    oauth = spec.oauth
    assert oauth is not None
    where = f"{errors.who(spec)} token command {os.path.basename(oauth.command[0])}"
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.update(IDLE_TENANT_ID=spec.id, IDLE_USERNAME=spec.username, IDLE_OAUTH_SCOPE=oauth.scope)
    try:
        proc = subprocess.Popen(list(oauth.command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=spec.base_dir,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        raise FatalError("config", f"{where} cannot run: {exc.strerror or exc}") from None
    try:
        output = exchange(proc, None, oauth.token_timeout, keepalive)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise ConnectionLost(f"{where} gave no token within {oauth.token_timeout:g}s") from None
    text = output.stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        last = (output.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
        reason = f"{where} exited with status {proc.returncode}: {errors.scrub(last, [text])[:200]}"
        if proc.returncode == EX_TEMPFAIL:
            raise ConnectionLost(reason)
        raise FatalError("auth", reason)
    if text.startswith("{"):
        try:
            answer = json.loads(text)
        except ValueError:
            raise FatalError("auth", f"{where} printed invalid JSON") from None
        if not isinstance(answer, dict):
            raise FatalError("auth", f"{where} printed JSON that is not an object")
        return parse_answer(spec, answer)
    lines = text.splitlines()
    if len(lines) != 1 or not lines[0]:
        raise FatalError("auth", f"{where} must print one line (the token) or JSON, printed {len(lines)} lines")
    return TokenResponse(Secret(lines[0].strip()), DEFAULT_LIFETIME)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()
