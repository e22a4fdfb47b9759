"""The container image, built and run for real with podman from the repository's Dockerfile.

No registry image can be pulled here, so the base is made locally (scripts/container-base.sh:
debootstrap a minimal Debian with python3, `podman import`) and passed as the BASE_IMAGE build
argument. The image is built from a clean copy of the tracked files (the .dockerignore applies),
then run configured by an env file only (`--env-file`, as docs/container.md says) against real
PostgreSQL behind the PostgREST test server and the test Dovecot, TLS verified via SSL_CERT_FILE
pointing at the mounted test CA.

Two settings are this machine's, not the image's: crun refuses hybrid cgroup hierarchies, so
runc is the OCI runtime; and without CAP_SYS_RESOURCE the runtime may not raise rlimits, so the
container gets limits below ours. The machine's package-index settings (CA bundle, pip.conf and
the local wheel directories it names) are lent to the build through read-only bind mounts, never
copied into the image.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.harness.deploy_build import PIP_TIMEOUT, REPO_ROOT, add_company, clean_copy, wait_until
from tests.servers.imap.mail_helpers import make_message
from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
HOST_PIP_SETTINGS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf", "/etc/xdg/pip",
                     "/opt/wheels", "/opt/pypi", "/opt/pypi-more")
STOP_TIMEOUT = 20  # docs/container.md: `docker stop -t 20`, above shutdown_timeout (10 s)


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:2])} failed ({result.returncode}):\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        if os.environ.get("CI"):
            raise RuntimeError("test_container needs root and apt-get (podman, debootstrap)")
        pytest.skip("needs root to install podman and make a base image")
    made = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "container-base.sh")],
                          capture_output=True, text=True, timeout=1200)
    assert made.returncode == 0, made.stderr[-3000:]
    base = made.stdout.strip().splitlines()[-1]
    context = clean_copy(tmp_path_factory.mktemp("image") / "context")
    tag = f"localhost/idle-supervisor:test-{uuid.uuid4().hex[:8]}"
    mounts = [arg for p in HOST_PIP_SETTINGS if os.path.exists(p) for arg in ("-v", f"{p}:{p}:ro")]
    podman("build", "--format", "docker", "--network", "host", *LIMITS, *mounts,
           "--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(context), timeout=PIP_TIMEOUT)
    try:
        yield tag
    finally:
        podman("rmi", "-f", tag, check=False)


def image_config(tag: str) -> dict:
    return json.loads(podman("image", "inspect", tag).stdout)[0]["Config"]


def image_healthcheck(tag: str) -> list[str]:
    """HEALTHCHECK's test: podman keeps it beside Config (Docker image format only)."""
    return json.loads(podman("image", "inspect", tag).stdout)[0]["Healthcheck"]["Test"]


def test_image_metadata_is_what_the_platforms_need(image):
    config = image_config(image)
    assert config["User"] == "idle"  # not root
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"] == ["idle-supervisor"] and config["Cmd"] == ["run"]  # exec form
    assert "/data" in config["Volumes"] and config["WorkingDir"] == "/data"
    assert "idle-supervisor status" in " ".join(image_healthcheck(image))


def test_container_runs_with_an_env_file_and_stops_cleanly(image, dovecot, pg_db, postgrest, tmp_path):
    add_company(pg_db, dovecot, "acme")
    add_company(pg_db, dovecot, "beta")
    env_file = tmp_path / "idle-supervisor.env"
    env_file.write_text(f"SUPABASE_URL={postgrest.url}\nSUPABASE_SERVICE_ROLE_KEY={TEST_SERVICE_KEY}\n"
                        "SSL_CERT_FILE=/certs/ca.pem\n")
    name = f"idle-supervisor-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-data"
    ca = f"{dovecot.ca_file}:/certs/ca.pem:ro"
    health = image_healthcheck(image)
    assert health[0] == "CMD"

    def logs() -> str:
        shown = podman("logs", name, check=False)
        return shown.stdout + shown.stderr

    podman("volume", "create", volume)
    try:
        # Loopback servers: the container shares the host's network (127.0.0.1 only is used).
        podman("run", "-d", "--name", name, "--network", "host", *LIMITS, "--env-file", str(env_file),
               "-v", ca, "-v", f"{volume}:/data", image)

        def status() -> dict | None:
            shown = podman("exec", name, "idle-supervisor", "status", "--json", check=False)
            return json.loads(shown.stdout) if shown.returncode == 0 else None

        wait_until(lambda: (s := status()) and set(s["tenants"]) == {"acme", "beta"}
                   and all(t["state"] == "idle" for t in s["tenants"].values()), 60,
                   "both companies idle", logs)
        pid1 = podman("exec", name, "cat", "/proc/1/cmdline").stdout  # its process title
        assert pid1.startswith("idle-supervisor: supervisor"), pid1  # PID 1, no shell before it
        assert podman("healthcheck", "run", name, check=False).returncode == 0  # healthy

        dovecot.deliver("acme", make_message("for acme"))
        dovecot.deliver("beta", make_message("for beta"))
        wait_until(lambda: pg_db.execute("SELECT tenant_id, subject FROM emails ORDER BY tenant_id")
                   == [("acme", "for acme"), ("beta", "for beta")], 30, "emails stored", logs)
        assert dovecot.who() == ["acme", "beta"]

        started = time.monotonic()
        podman("stop", "-t", str(STOP_TIMEOUT), name, timeout=STOP_TIMEOUT + 30)
        assert time.monotonic() - started < STOP_TIMEOUT  # SIGTERM did it, not the SIGKILL
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, logs()
        wait_until(lambda: dovecot.who() == [], 5, "all IMAP sessions gone")
        text = logs()
        assert "Traceback" not in text and TEST_SERVICE_KEY not in text

        # The healthcheck's own command, on the same volume with no supervisor running: unhealthy.
        after = podman("run", "--rm", "--network", "host", *LIMITS, "--env-file", str(env_file),
                       "-v", f"{volume}:/data", "--entrypoint", health[1], image, *health[2:],
                       check=False)
        assert after.returncode == 1, after.stdout + after.stderr
    finally:
        podman("rm", "-f", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)
