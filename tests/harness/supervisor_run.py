"""Run the real supervisor as a subprocess, exactly as a user would, and watch it from outside.

Everything goes through the product's interface: the config TOML, `python -m supervisor run`,
signals, status.json and the jsonl handler's output. Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import psutil

if TYPE_CHECKING:  # psycopg stays a test-only import: bench/ and the demo use this module too
    from tests.servers.postgres.postgrest_server import PostgrestServer

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class TenantEntry:
    id: str
    user: str
    password: str
    host: str = "127.0.0.1"
    port: int | None = None  # default: the Dovecot imaps port
    name: str | None = None
    security: str = "tls"
    ca_file: str | None | bool = True  # True: the Dovecot private CA; None: system trust
    folder: str = "INBOX"
    via_env: bool = True  # password through password_env (the documented way)
    auth: str | None = None  # password (the product's default) | xoauth2 | oauthbearer
    oauth: dict[str, Any] | None = None  # written as the tenant's [tenant.oauth] sub-table
    extra: dict[str, Any] = field(default_factory=dict)  # further [[tenant]] keys (dedupe_window ...)

    def env_var(self) -> str:
        return f"PW_{self.id.upper().replace('-', '_').replace('.', '_')}"


@dataclass
class SupervisorRun:
    workdir: Path
    dovecot: Any
    tenants: list[TenantEntry]
    supervisor: dict[str, Any] = field(default_factory=dict)
    imap: dict[str, Any] = field(default_factory=dict)
    handler: dict[str, Any] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. {"metrics": {...}}
    command_prefix: list[str] = field(default_factory=list)  # e.g. unshare: run it as PID 1
    entry_module: str = "supervisor"  # `python -m <this> run`: a test wrapper may inject faults
    proc: subprocess.Popen[bytes] | None = None

    # Every run made during the current test: conftest attaches their logs to a failure report,
    # so a failed assertion in CI shows what the supervisor said (a flaky restart is otherwise
    # unexplainable once the test's tmp dir is gone).
    created: ClassVar[list["SupervisorRun"]] = []

    def __post_init__(self) -> None:
        SupervisorRun.created.append(self)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.toml"
        self.state_dir = self.workdir / "state"
        self.jsonl_path = self.workdir / "emails.jsonl"
        self.log_path = self.workdir / "supervisor.log"
        self.write_config()

    # ---- config ------------------------------------------------------------------------

    def write_config(self) -> None:
        supervisor = {"state_dir": str(self.state_dir), "heartbeat_interval": 0.5,
                      "heartbeat_timeout": 10, "restart_backoff": 1, "restart_jitter": 0.0,
                      "shutdown_timeout": 5, "kill_timeout": 2, **self.supervisor}
        imap = {"poll_interval": 1, "connect_timeout": 5, "command_timeout": 5, **self.imap}
        handler = self.handler or {"target": "tenant_proc.handlers:jsonl",
                                   "path": str(self.jsonl_path)}
        lines = [_table("supervisor", supervisor), _table("imap", imap), _table("handler", handler)]
        lines += [_table(name, table) for name, table in self.extra_sections.items()]
        for t in self.tenants:
            row: dict[str, Any] = {
                "id": t.id, "name": t.name or t.id, "host": t.host,
                "port": t.port or (self.dovecot.imaps_port if t.security == "tls" else self.dovecot.imap_port),
                "security": t.security, "username": t.user, "folder": t.folder,
            }
            if t.ca_file is True:
                row["ca_file"] = str(self.dovecot.ca_file)
            elif isinstance(t.ca_file, str):
                row["ca_file"] = t.ca_file
            row["auth"] = t.auth
            row.update(t.extra)
            if t.auth is None or t.password:  # an OAuth tenant needs no password
                if t.via_env:
                    row["password_env"] = t.env_var()
                else:
                    row["password"] = t.password
            oauth = f"[tenant.oauth]\n{_body(t.oauth)}" if t.oauth else ""
            lines.append("[[tenant]]\n" + _body(row) + oauth)
        self.config_path.write_text("\n".join(lines))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("NOTIFY_SOCKET", None)
        for t in self.tenants:
            env[t.env_var()] = t.password
        env.update(self.extra_env)
        return env

    # ---- process -----------------------------------------------------------------------

    def start(self, wait_running: bool = True, timeout: float = 20) -> SupervisorRun:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", self.entry_module, "run",
             "--config", str(self.config_path)],
            cwd=self.workdir, env=self.env(), stdout=self._log, stderr=subprocess.STDOUT,
        )
        if wait_running:
            self.wait_for(lambda s: all(
                t.get("state") in ("idle", "polling", "failed") for t in s["tenants"].values()
            ) and len(s["tenants"]) == len(self.tenants), timeout, "all tenants up")
        return self

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", *args, "--config", str(self.config_path)],
            cwd=self.workdir, env=self.env(), capture_output=True, text=True, timeout=timeout,
        )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait; returns the exit code. Kills the whole tree on timeout."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            raise AssertionError(f"supervisor did not exit within {timeout}s:\n{self.log_text()[-3000:]}")

    def kill_tree(self) -> None:
        if self.proc is None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for p in [*children]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> SupervisorRun:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.stop()
        finally:
            self.kill_tree()
            if hasattr(self, "_log"):
                self._log.close()

    # ---- observation -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"supervisor": {}, "tenants": {}}

    def tenant(self, tid: str) -> dict[str, Any]:
        return self.status()["tenants"].get(tid, {})

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited ({self.proc.returncode}) waiting for {what}:\n"
                                     f"{self.log_text()[-3000:]}")
            status = self.status()
            try:
                if predicate(status):
                    return status
            except (KeyError, TypeError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; status: "
                             f"{json.dumps(status)[:2000]}\nlog:\n{self.log_text()[-3000:]}")

    def emails(self) -> list[dict[str, Any]]:
        try:
            text = self.jsonl_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_emails(self, count: int, timeout: float = 15, tenant: str | None = None) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.emails() if tenant is None or e["tenant_id"] == tenant]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        found = [e for e in self.emails() if tenant is None or e["tenant_id"] == tenant]
        raise AssertionError(f"expected {count} emails for {tenant or 'all'}, got {len(found)}:\n"
                             f"{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def child_pids(self) -> dict[str, int]:
        return {tid: t["pid"] for tid, t in self.status()["tenants"].items() if t.get("pid")}

    def live_children(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


@dataclass
class SupabaseRun(SupervisorRun):
    """A SupervisorRun whose companies and state are in Supabase (`api`, the PostgREST test server).

    Pass no tenants: companies are rows in the database, so the file has no [[tenant]] tables.
    TLS to Dovecot is verified against the test CA through SSL_CERT_FILE, because a company row
    has no ca_file column.
    """

    api: PostgrestServer | None = None

    def write_config(self) -> None:
        self.extra_sections = {"tenants": {"source": "supabase"}, "state": {"backend": "supabase"},
                               **self.extra_sections}
        super().write_config()

    def env(self) -> dict[str, str]:
        from tests.servers.postgres.postgrest_server import TEST_SERVICE_KEY

        env = super().env()
        assert self.api is not None
        env.update(SUPABASE_URL=self.api.url, SUPABASE_SERVICE_ROLE_KEY=TEST_SERVICE_KEY,
                   SSL_CERT_FILE=str(self.dovecot.ca_file))
        return env

    def wait_tenants(self, ids: set[str], timeout: float = 20) -> dict[str, Any]:
        return self.wait_for(lambda s: set(s["tenants"]) == ids and all(
            s["tenants"][t]["state"] == "idle" for t in ids), timeout, f"tenants {sorted(ids)} idle")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _body(table: dict[str, Any]) -> str:
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items() if v is not None)


def _table(name: str, table: dict[str, Any]) -> str:
    return f"[{name}]\n" + _body(table)


def unique_emails(emails: list[dict[str, Any]]) -> set[tuple[str, int, int]]:
    return {(e["tenant_id"], e["uidvalidity"], e["uid"]) for e in emails}


def process_gone_within(pids: list[int], timeout: float) -> list[int]:
    """Pids still alive after timeout (empty list: all gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.05)
    return alive


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
