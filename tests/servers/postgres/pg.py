"""A throwaway PostgreSQL 15 for tests: one server per session, one fresh database per test.

The server lives in a temp dir, listens on 127.0.0.1 at a free port and on a unix socket inside
that dir, runs with durability switched off (tests never need crash safety, and fsync makes
each CREATE DATABASE cost a second), and is stopped when the session ends. As root, initdb and
the server must run as the `postgres` user: PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.servers.ports import Reservation, reserve_port

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
MIGRATIONS_DIR = Path(__file__).resolve().parents[3] / "sql"
START_TIMEOUT = 30.0  # seconds; a cold start is ~1 s
STOP_TIMEOUT = 10.0
INITDB_TIMEOUT = 60.0
SUPERUSER = "postgres"

_db_counter = itertools.count(1)


class PostgresUnavailable(RuntimeError):
    """PostgreSQL binaries are missing or the server would not start."""


def find_pg_bin() -> Path:
    for candidate in PG_BIN_CANDIDATES:
        if (Path(candidate) / "postgres").is_file():
            return Path(candidate)
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (apt-get install postgresql); looked in "
        + ", ".join(PG_BIN_CANDIDATES)
    )


# The ports of the servers this process started: held while they live (tests/servers/ports.py).
_HELD_PORTS: list[Reservation] = []


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))


def _run_as() -> str | None:
    """The OS user the server runs as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root but there is no 'postgres' user") from None
    return "postgres"


@dataclass
class PostgresServer:
    root: Path
    port: int
    process: subprocess.Popen

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname} connect_timeout=5"

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), **kwargs)

    def create_database(self, migrate: bool = True) -> "PostgresDatabase":
        name = f"t{os.getpid()}_{next(_db_counter)}"
        with self.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name is ours, not user input
        db = PostgresDatabase(server=self, name=name)
        if migrate:
            db.apply_migrations()
        return db

    def drop_database(self, name: str) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PostgresDatabase:
    server: PostgresServer
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def connect(self, **kwargs) -> psycopg.Connection:
        return self.server.connect(self.name, **kwargs)

    def apply_migrations(self) -> None:
        for path in migration_files():
            self.apply_sql_file(path)

    def apply_sql_file(self, path: Path) -> None:
        # The files manage their own transactions (BEGIN/COMMIT), as they would in psql.
        with self.connect(autocommit=True) as conn:
            conn.execute(path.read_text())

    def execute(self, sql: str, params: tuple | dict | None = None) -> list[tuple]:
        with self.connect(autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def drop(self) -> None:
        self.server.drop_database(self.name)


def start_postgres() -> PostgresServer:
    """initdb into a temp dir and start the server; bounded waits everywhere."""
    pg_bin = find_pg_bin()
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="idle-sup-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if user:
        shutil.chown(root, user=user)
        shutil.chown(sockets, user=user)
    try:
        subprocess.run(
            [str(pg_bin / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            user=user, check=True, capture_output=True, timeout=INITDB_TIMEOUT,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed: {exc.stderr.decode(errors='replace')[-2000:]}") from None
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    last_error = ""
    for _ in range(3):
        reservation = reserve_port()  # held while the server lives (tests/servers/ports.py)
        port = reservation.port
        with open(root / "server.log", "ab") as log_file:
            proc = subprocess.Popen(
                [str(pg_bin / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                 "-k", str(sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200",
                 "-c", "log_min_messages=warning", "-c", "logging_collector=off"],
                user=user, stdout=subprocess.DEVNULL, stderr=log_file,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's, not the server's
            )
        server = PostgresServer(root=root, port=port, process=proc)
        _HELD_PORTS.append(reservation)
        last_error = _wait_ready(server)
        if not last_error:
            return server
        stop_process(proc)
    log_tail = (root / "server.log").read_text(errors="replace")[-2000:]
    shutil.rmtree(root, ignore_errors=True)
    raise PostgresUnavailable(f"PostgreSQL did not start: {last_error}\n{log_tail}")


def _wait_ready(server: PostgresServer) -> str:
    """'' once a connection works; else why not (exited, or still not up at the deadline)."""
    deadline = time.monotonic() + START_TIMEOUT
    error = "timed out"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"server exited with code {server.process.returncode}"
        try:
            with server.connect(connect_timeout=2):
                return ""
        except psycopg.OperationalError as exc:
            error = str(exc).strip()
        time.sleep(0.05)
    return error


def stop_process(proc: subprocess.Popen) -> None:
    """SIGINT is PostgreSQL's fast shutdown; SIGKILL if it does not finish in time."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
