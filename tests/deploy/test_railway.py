"""Railway from the repository, as shipped: Railpack's build steps, then railway.json's start
command as PID 1, configured by nothing but environment variables.

Railpack (the RAILPACK builder) builds a Python project that has a requirements.txt in /app:
`python -m venv /app/.venv`, then `pip install -r requirements.txt` there, with the Python of
`.python-version`; the deployment runs the start command in /app with /app/.venv/bin on PATH, and
sends SIGTERM on a redeploy, SIGKILL `drainingSeconds` later. These tests do exactly that, in a
mount namespace where a clean copy of the tracked files is /app, and a PID namespace for the
deployment (so the supervisor is PID 1, as in the container): against real PostgreSQL behind the
PostgREST test server (companies are rows) and the test Dovecot, TLS verified via SSL_CERT_FILE.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.harness.deploy_build import (
    PIP_TIMEOUT,
    add_company,
    base_python,
    builder_env,
    clean_copy,
    wait_until,
)
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP = Path("/app")  # Railpack's working directory; requirements.txt names it
# Railpack's runtime variables for Python deployments (railpack.com/languages/python).
RAILPACK_RUNTIME_ENV = {"PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1",
                        "PYTHONHASHSEED": "random", "PYTHONDONTWRITEBYTECODE": "1",
                        "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "100"}
DEPLOY_PATH = f"{APP}/.venv/bin:/usr/local/bin:/usr/bin:/bin"


def _can_namespace() -> bool:
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "nsenter", "mount"))


@dataclass
class RailwayApp:
    src: Path  # the clean copy, mounted at /app inside the namespaces

    def in_app(self, argv: list[str], pid_namespace: bool = False) -> list[str]:
        """argv run in /app (the clean copy bind-mounted there), exec'd, optionally as PID 1."""
        ns = ["unshare", "--mount", "--propagation", "private"]
        if pid_namespace:
            ns += ["--pid", "--fork", "--mount-proc"]
        script = f'mount --bind {shlex.quote(str(self.src))} {APP} && cd {APP} && exec "$@"'
        return [*ns, "sh", "-c", script, "sh", *argv]

    def railway(self) -> dict:
        return json.loads((self.src / "railway.json").read_text())


@pytest.fixture(scope="module")
def railway_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RailwayApp]:
    if not _can_namespace():
        if os.environ.get("CI"):
            raise RuntimeError("test_railway needs root, unshare, nsenter and mount")
        pytest.skip("needs root and unshare(1) for mount and PID namespaces")
    app = RailwayApp(clean_copy(tmp_path_factory.mktemp("railway") / "app"))
    python = base_python((app.src / ".python-version").read_text().strip())
    created = not APP.exists()
    APP.mkdir(exist_ok=True)  # an empty mount point; the copy is mounted on it privately
    try:
        # Railpack's install step, word for word (core/providers/python: InstallPip).
        steps = f"{shlex.quote(python)} -m venv {APP}/.venv && pip install -r requirements.txt"
        build = subprocess.run(app.in_app(["sh", "-c", steps]), capture_output=True, text=True,
                               timeout=PIP_TIMEOUT,
                               env=builder_env(PATH=DEPLOY_PATH, VIRTUAL_ENV=f"{APP}/.venv"))
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        yield app
    finally:
        if created:
            APP.rmdir()


def deploy_env(**extra: str) -> dict[str, str]:
    return builder_env(PATH=DEPLOY_PATH, **RAILPACK_RUNTIME_ENV, **extra)


def read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"tenants": {}}


def maps_library(pid: int, name: str) -> bool:
    """Has the process loaded a shared object whose path contains name? (pydantic_core is the
    C extension supabase-py pulls in through postgrest: present iff supabase-py was imported.)"""
    try:
        return name in Path(f"/proc/{pid}/maps").read_text()
    except FileNotFoundError:
        return False


def ns_pid(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return line.split()[-1]
    return ""


def test_railway_deploy_with_env_only_config(railway_app, dovecot, pg_db, postgrest, tmp_path):
    add_company(pg_db, dovecot, "acme")
    add_company(pg_db, dovecot, "beta")
    deploy = railway_app.railway()["deploy"]
    argv = shlex.split(deploy["startCommand"])
    draining = float(deploy["drainingSeconds"])
    env = deploy_env(SUPABASE_URL=postgrest.url, SUPABASE_SERVICE_ROLE_KEY=TEST_SERVICE_KEY,
                     SSL_CERT_FILE=str(dovecot.ca_file))
    log_path = tmp_path / "deploy.log"
    logs = lambda: log_path.read_text(errors="replace")  # noqa: E731
    status_path = railway_app.src / "state" / "status.json"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(railway_app.in_app(argv, pid_namespace=True), env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        status = wait_until(lambda: (s := read_status(status_path)) and set(s["tenants"]) == {"acme", "beta"}
                            and all(t.get("state") == "idle" for t in s["tenants"].values()) and s,
                            60, "both companies idle", logs, proc)
        (supervisor,) = psutil.Process(proc.pid).children()
        assert ns_pid(supervisor.pid) == "1" and "idle-supervisor" in " ".join(supervisor.cmdline())
        tenants = [p.pid for p in supervisor.children()]
        assert len(tenants) == 2
        # supabase-py was imported once, in the supervisor before it forked (shared pages).
        assert maps_library(supervisor.pid, "pydantic_core")
        assert all(maps_library(pid, "pydantic_core") for pid in tenants)

        # `idle-supervisor status` as an operator runs it in the deployment (railway ssh).
        shown = subprocess.run(["nsenter", "-t", str(supervisor.pid), "-m", "-p", "-w",
                                "idle-supervisor", "status"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert {"acme", "beta"} <= {line.split()[0] for line in shown.stdout.splitlines()[2:]}
        assert status["tenants"]["acme"]["name"] == "Acme AB"

        # No [handler] configured and companies from Supabase: mail lands in the emails table.
        dovecot.deliver("acme", make_message("for acme"))
        dovecot.deliver("beta", make_message("for beta"))
        wait_until(lambda: pg_db.execute("SELECT tenant_id, subject FROM emails ORDER BY tenant_id")
                   == [("acme", "for acme"), ("beta", "for beta")], 30, "emails stored", logs)
        wait_until(lambda: pg_db.execute("SELECT count(*) FROM processed_emails WHERE "
                                         "status = 'processed'") == [(2,)], 30, "ledger", logs)
        assert dovecot.who() == ["acme", "beta"]

        started = time.monotonic()
        supervisor.send_signal(signal.SIGTERM)  # what Railway sends on a redeploy
        assert proc.wait(draining) == 0  # unshare passes on PID 1's exit code
        assert time.monotonic() - started < draining
        # Every session logged out (Dovecot drops a session from `who` a moment after LOGOUT).
        wait_until(lambda: dovecot.who() == [], 5, "all IMAP sessions gone")
    finally:
        if proc.poll() is None:
            for p in psutil.Process(proc.pid).children(recursive=True):
                p.kill()
            proc.kill()
            proc.wait(10)
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text and TEST_SERVICE_KEY not in text
    assert "[Acme AB] logged out" in text and "[Beta AB] logged out" in text, text[-3000:]


def test_metrics_without_prometheus_client_is_one_line_and_exit_2(railway_app, tmp_path):
    """The build has no extras: configuring [metrics] must say which pip install to run."""
    env = deploy_env(IDLE_SUPERVISOR_METRICS_LISTEN="127.0.0.1:0",
                     IDLE_SUPERVISOR_SUPERVISOR_STATE_DIR=str(tmp_path / "state"))
    probe = subprocess.run(railway_app.in_app(["python", "-c", "import prometheus_client"]),
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0  # really absent: otherwise this test could not fail
    result = subprocess.run(railway_app.in_app(["idle-supervisor", "run"]), env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "pip install 'idle-supervisor[metrics]'" in lines[0]


def test_file_only_deployment_never_imports_supabase(dovecot, tmp_path):
    """supabase-py is installed with the package now; a file-only supervisor still pays nothing
    for it: neither the supervisor nor a tenant loads it (its pydantic_core is never mapped)."""
    dovecot.add_user("acme", "acme-pw")
    run = SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")])
    with run.start():
        pids = [run.proc.pid, *run.child_pids().values()]
        assert len(pids) == 2
        dovecot.deliver("acme", make_message("file only"))
        run.wait_emails(1)
        assert [pid for pid in pids if maps_library(pid, "pydantic_core")] == []
        assert all(Path(f"/proc/{pid}/maps").read_text() for pid in pids)  # readable, not vacuous
