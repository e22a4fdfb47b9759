"""The systemd unit, the Railway start command and supervisor.service.sdnotify, on real sockets."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from supervisor.service import sdnotify

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "idle-supervisor.service"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)


def _runnable_copy(directory: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here; all else identical.

    verify checks that ExecStart's binary exists, and the venv under /opt is not on a test machine.
    """
    text = UNIT.read_text()
    exec_lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_lines) == 1, "expected exactly one ExecStart= line"
    runnable = f"ExecStart={sys.executable} -c pass"
    copy = directory / UNIT.name  # same name: verify and security key off the unit name
    copy.write_text(text.replace(exec_lines[0], runnable))
    return copy


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
    )


# --- the unit -------------------------------------------------------------------------------

@needs_analyze
def test_unit_verifies_without_any_output(tmp_path: Path) -> None:
    # verify only warns on bad keys and values and still exits 0: any output is a failure.
    result = _analyze("verify", str(_runnable_copy(tmp_path)))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", f"systemd-analyze verify said:\n{output}"


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    # Guards the test above: a misspelt key must produce output, or "no output" proves nothing.
    copy = _runnable_copy(tmp_path)
    copy.write_text(copy.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = _analyze("verify", str(copy))
    assert "NoNewPrivilege" in result.stdout + result.stderr


@needs_analyze
def test_unit_security_exposure_is_low(tmp_path: Path) -> None:
    result = _analyze("security", "--offline=true", "--no-pager", str(_runnable_copy(tmp_path)))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout + result.stderr)
    assert match, f"no exposure score in output:\n{result.stdout}\n{result.stderr}"
    score = float(match.group(1))
    print(f"\nsystemd-analyze security: overall exposure level {score} (limit {MAX_EXPOSURE})")
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{result.stdout}"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_keeps_what_the_supervisor_relies_on() -> None:
    s = _unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["KillMode"] == ["mixed"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # Above the default shutdown_timeout (10 s), or systemd SIGKILLs a clean shutdown.
    assert float(s["TimeoutStopSec"][0]) > 10
    # sd_notify is an AF_UNIX datagram: dropping AF_UNIX would silently break READY=1.
    assert "AF_UNIX" in s["RestrictAddressFamilies"][0].split()
    assert s["StateDirectory"] == ["idle-supervisor"]
    # 1,000 tenants need more than the default soft limit of 1024 descriptors.
    assert int(s["LimitNOFILE"][0]) >= 4096
    # Config errors exit with this code; systemd must not retry them every RestartSec.
    from supervisor.cli.args import EXIT_USAGE
    assert str(EXIT_USAGE) in s["RestartPreventExitStatus"][0].split()
    argv = shlex.split(s["ExecStart"][0])
    assert argv[1:3] == ["run", "--config"], argv


def test_python_works_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes: what the children do at start must still work under it.

    PR_SET_MDWE (Linux 6.3+) is the kernel's version of the same rule (systemd 257+ uses it too).
    """
    code = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X mapping was allowed: the rule is not in force")
except OSError:
    pass
assert libc.prctl(1, 15, 0, 0, 0) == 0  # PR_SET_PDEATHSIG, as tenant_proc does via ctypes
assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7  # libffi closures (ctypes import makes one)
import setproctitle
setproctitle.setproctitle("Acme AB [idle]")
import multiprocessing, sqlite3, ssl, orjson  # noqa: F401  (C extensions load fine)
print(open("/proc/self/comm").read().strip())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if result.returncode == 77:
        pytest.skip("kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Acme AB [idle]"


# --- Railway ----------------------------------------------------------------------------------

def test_railway_start_command_execs_the_supervisor() -> None:
    config = json.loads((ROOT / "railway.json").read_text())
    command = config["deploy"]["startCommand"]
    argv = shlex.split(command)
    shells = {"sh", "bash", "dash", "zsh", "/bin/sh", "/bin/bash", "/usr/bin/env"}
    assert argv[0] not in shells, f"a shell would swallow SIGTERM: {command!r}"
    assert not re.search(r"[;&|`$()<>]", command), f"shell syntax forces a shell: {command!r}"
    assert argv[:2] == ["idle-supervisor", "run"]
    # Railway's default drain is 3 s; the supervisor needs its shutdown_timeout inside it.
    assert config["deploy"].get("drainingSeconds", 3) > 10
    procfile = (ROOT / "Procfile").read_text().split()
    assert procfile[:3] == ["worker:", "idle-supervisor", "run"]


# --- sdnotify ---------------------------------------------------------------------------------

class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)
        self.env_value = env_value

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def empty(self) -> bool:
        self.sock.settimeout(0.2)
        try:
            self.sock.recv(4096)
            return False
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5)


@pytest.fixture(autouse=True)
def _fresh_sdnotify(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(key, raising=False)
    sdnotify.close()
    yield
    sdnotify.close()


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    # mkdtemp under /tmp: sun_path is limited to 108 bytes, pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(directory, "notify")
    lst = Listener(path, path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield lst
    lst.sock.close()
    shutil.rmtree(directory)


def test_messages_arrive_verbatim(listener: Listener) -> None:
    assert sdnotify.enabled()
    assert sdnotify.ready()
    assert listener.recv() == "READY=1"
    assert sdnotify.status("40 tenants: 38 idle, 1 polling, 1 failed")
    assert listener.recv() == "STATUS=40 tenants: 38 idle, 1 polling, 1 failed"
    assert sdnotify.watchdog()
    assert listener.recv() == "WATCHDOG=1"
    assert sdnotify.stopping()
    assert listener.recv() == "STOPPING=1"
    assert sdnotify.notify("ERRNO=0\nX_CUSTOM=Företag Å")
    assert listener.recv() == "ERRNO=0\nX_CUSTOM=Företag Å"


def test_reloading_carries_monotonic_usec(listener: Listener) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = listener.recv().split("\n")
    assert lines[0] == "RELOADING=1"
    fields = dict(line.split("=", 1) for line in lines)
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_status_stays_one_line(listener: Listener) -> None:
    # A newline would start a second assignment, e.g. a stray "READY=1" from an error text.
    sdnotify.status("bad\nREADY=1")
    assert listener.recv() == "STATUS=bad READY=1"


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"idle-supervisor-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = Listener("\0" + name, "@" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert lst.recv() == "READY=1"
    finally:
        lst.sock.close()


def test_unset_socket_is_a_quiet_false() -> None:
    assert not sdnotify.enabled()
    for send in (sdnotify.ready, sdnotify.reloading, sdnotify.stopping, sdnotify.watchdog):
        assert send() is False
    assert sdnotify.status("x") is False


def test_nobody_listening_is_false_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/idle-supervisor/notify")
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")  # not an address systemd hands out
    assert sdnotify.ready() is False


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_one_close_on_exec_socket_for_all_messages(listener: Listener) -> None:
    sdnotify.watchdog()
    fds = _open_fds()
    for _ in range(200):
        assert sdnotify.watchdog()
        listener.recv()
    assert _open_fds() == fds, "a socket per message would leak or churn descriptors"
    sock = sdnotify._sock
    assert sock is not None and not os.get_inheritable(sock.fileno())


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("2000000", None, 1.0),
        ("60000000", None, 30.0),
        ("2000000", "self", 1.0),
        ("2000000", "other", None),
        ("0", None, None),
        ("", None, None),
        ("soon", None, None),
        ("2000000", "not-a-pid", None),
        (None, None, None),
    ],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None,
                           expected: float | None) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    assert sdnotify.watchdog_interval() == expected


def _child_report(conn: "multiprocessing.connection.Connection") -> None:
    conn.send_bytes(json.dumps({
        "env": os.environ.get("NOTIFY_SOCKET"),
        "watchdog_env": os.environ.get("WATCHDOG_USEC"),
        "enabled": sdnotify.enabled(),
        "sent": sdnotify.ready(),
    }).encode())


def test_forget_keeps_socket_for_parent_only(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    sdnotify.watchdog()  # the socket exists before the fork: the child gets a copy of the fd
    assert listener.recv() == "WATCHDOG=1"
    sdnotify.forget_notify_socket()
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert sdnotify.watchdog_interval() == 1.0  # the parent still knows

    # A forked tenant: neither the environment nor the module lets it notify.
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_report, args=(child_end,))
    proc.start()
    child_end.close()
    report = json.loads(parent_end.recv_bytes())
    proc.join(10)
    assert report == {"env": None, "watchdog_env": None, "enabled": False, "sent": False}

    # Anything a handler execs does not see it either.
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('NOTIFY_SOCKET'))"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "None"

    assert sdnotify.ready()
    assert listener.recv() == "READY=1"
    assert listener.empty(), "the child must not have sent anything"


# --- the example files ------------------------------------------------------------------------

def test_example_config_fits_the_unit() -> None:
    from supervisor.config.load import load_config
    from supervisor.tenants.rows import build_tenant_specs

    config = load_config(ROOT / "systemd" / "config.toml.example")
    unit = _unit_settings()
    # The only writable place under ProtectSystem=strict is the StateDirectory=.
    assert config.supervisor.state_dir == "/var/lib/" + unit["StateDirectory"][0]
    assert config.supervisor.shutdown_timeout < float(unit["TimeoutStopSec"][0])
    env = dict(
        line.split("=", 1) for line in (ROOT / "systemd" / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    load = build_tenant_specs(config, config.raw_tenants, env)
    assert load.errors == {} and len(load.specs) >= 1
    assert all(value == "change-me" for value in env.values()), "placeholders only in env.example"
