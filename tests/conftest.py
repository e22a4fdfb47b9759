"""Shared pytest setup. Each team appends its own clearly headed section below."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The repo root must be importable as such (`tests.servers.imap.dovecot`, `supervisor`, ...)
# however pytest is started; `python -m pytest` from the root already does this.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.servers.certs import CertPaths, session_certs  # noqa: E402
from tests.servers.imap.dovecot import Dovecot  # noqa: E402

# --- Markers ---
# Only one pytest_configure may exist in this file: add further markers here.
MARKERS = {
    "slow": "takes more than a few seconds (deselect with -m 'not slow')",
    "integration": "starts real processes or servers (Dovecot, PostgreSQL, the supervisor)",
    "allow_traceback": "allow_traceback(reason): a traceback or crash line in this test's supervisor "
                       "logs is the behaviour under test (tests/harness/log_checks.py)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


# --- Supervisor logs: attached on failure, kept on request, free of tracebacks ---
# A test that fails after its supervisor stopped leaves only an assertion; the supervisor's own
# log (kept in the test's tmp dir, deleted after a CI run) says why. Attach its tail.
# `--supervisor-logs DIR` copies every supervisor log a test wrote to DIR (one file per run,
# named after the test) to read or grep after a run.
# Every log is checked after the test for tracebacks and for the one-line reports of an unhandled
# exception (tests/harness/log_checks.py says why): one fails an otherwise passing test in its teardown,
# unless the test is marked `@pytest.mark.allow_traceback("reason")` because it provoked it.
SUPERVISOR_LOG_TAIL = 6000
CALL_PASSED = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--supervisor-logs", metavar="DIR", default=None,
                     help="copy every supervisor log a test wrote to DIR")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    from tests.harness.supervisor_run import SupervisorRun

    # Before the fixtures: a run a fixture starts belongs to this test too.
    SupervisorRun.created.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    from tests.harness.supervisor_run import SupervisorRun

    outcome = yield
    report = outcome.get_result()
    runs = list(SupervisorRun.created)
    if call.when == "call":
        item.stash[CALL_PASSED] = report.passed
    if report.failed and call.when in ("call", "teardown"):
        for index, run in enumerate(runs):
            report.sections.append((f"supervisor log #{index + 1} ({run.log_path})",
                                    run.log_text()[-SUPERVISOR_LOG_TAIL:]))
    if call.when != "teardown" or not runs:
        return  # teardown: every fixture has stopped its supervisor, the logs are complete
    texts = [run.log_text() for run in runs]
    keep_dir = item.config.getoption("--supervisor-logs")
    if keep_dir:
        _keep_logs(Path(keep_dir), item.nodeid, texts)
    if report.passed and item.stash.get(CALL_PASSED, False):  # a failed test has its own story
        problem = _traceback_problem(item, texts)
        if problem:
            report.outcome = "failed"
            report.longrepr = problem


def _keep_logs(keep_dir: Path, nodeid: str, texts: list[str]) -> None:
    keep_dir.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in nodeid)[-180:]
    for index, text in enumerate(texts):
        (keep_dir / f"{stem}.{index + 1}.log").write_text(text)


def _traceback_problem(item: pytest.Item, texts: list[str]) -> str | None:
    """Why this test must fail because of its supervisor logs, or None."""
    from tests.harness.log_checks import find_tracebacks

    marker = item.get_closest_marker("allow_traceback")
    if marker is not None:
        if marker.args and str(marker.args[0]).strip():
            return None
        return "@pytest.mark.allow_traceback needs a reason: why is a traceback right here?"
    found = [(index, excerpt) for index, text in enumerate(texts) for excerpt in find_tracebacks(text)]
    if not found:
        return None
    shown = "\n\n".join(f"supervisor log #{index + 1}:\n{excerpt}" for index, excerpt in found[:3])
    return (f"{len(found)} traceback(s) or crash line(s) in the supervisor log(s) of a passing test: "
            f"an unhandled exception is a bug (if the test provoked it, mark it "
            f"allow_traceback(reason)):\n\n{shown}")


# --- Dovecot fixtures ---
# Users every fixture instance knows; add more per test with dovecot.add_user().
DEFAULT_USERS = {"alice": "alice-pw", "bob": "bob-pw"}


@pytest.fixture(scope="session")
def certs() -> CertPaths:
    """Private CA, CA-signed server cert and an untrusted cert, made once per session."""
    return session_certs()


@pytest.fixture
def dovecot(tmp_path: Path, certs: CertPaths) -> Iterator[Dovecot]:
    """A fresh, running Dovecot for one test; stopped afterwards even if the test fails."""
    server = Dovecot(tmp_path / "dovecot", users=dict(DEFAULT_USERS))
    with server:
        yield server


@pytest.fixture(scope="session")
def dovecot_session(tmp_path_factory: pytest.TempPathFactory, certs: CertPaths) -> Iterator[Dovecot]:
    """One Dovecot shared by the whole session: cheaper, but tests must not assume
    an empty mailbox or a fixed user set (use unique user names via add_user())."""
    server = Dovecot(tmp_path_factory.mktemp("dovecot-session"), users=dict(DEFAULT_USERS))
    with server:
        yield server


# --- PostgreSQL / Supabase fixtures ---
# A real PostgreSQL 15 per session, a fresh migrated database per test, and a PostgREST-compatible
# server in front of it so the real supabase-py client can be used (see tests/servers/postgres/postgrest_server.py).
import os as _os  # noqa: E402

from tests.servers.postgres.pg import (  # noqa: E402
    PostgresDatabase,
    PostgresServer,
    PostgresUnavailable,
    start_postgres,
)
from tests.servers.postgres.postgrest_server import TEST_ANON_KEY, TEST_SERVICE_KEY, PostgrestServer  # noqa: E402

# Keys live in tests.servers.postgres.postgrest_server: conftest may be imported twice (as conftest and tests.conftest).
SUPABASE_SERVICE_KEY = TEST_SERVICE_KEY
SUPABASE_ANON_KEY = TEST_ANON_KEY


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """PostgreSQL in a temp dir on 127.0.0.1; skipped locally if not installed, an error in CI."""
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        if _os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_db(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A fresh database with sql/*.sql applied; dropped afterwards."""
    db = postgres_server.create_database(migrate=True)
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def postgrest(pg_db: PostgresDatabase) -> Iterator[PostgrestServer]:
    """The REST API over pg_db; `.url` for SUPABASE_URL, keys in SUPABASE_SERVICE_KEY/ANON_KEY."""
    server = PostgrestServer(pg_db.dsn, SUPABASE_SERVICE_KEY, anon_key=SUPABASE_ANON_KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def supabase_env(postgrest: PostgrestServer) -> dict[str, str]:
    """The two variables a deployment sets, pointing at the test server."""
    return {"SUPABASE_URL": postgrest.url, "SUPABASE_SERVICE_ROLE_KEY": SUPABASE_SERVICE_KEY}


# --- OAuth identity-provider stand-in fixtures (tests/servers/oauth/idp.py) ---
from tests.servers.oauth.idp import IdentityProvider  # noqa: E402


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    """A running token endpoint + introspection stand-in on plain http (loopback); 60 s tokens."""
    with IdentityProvider(token_lifetime=60) as server:
        yield server


@pytest.fixture
def oauth_dovecot(tmp_path: Path, certs: CertPaths, idp: IdentityProvider) -> Iterator[Dovecot]:
    """A running Dovecot that also takes XOAUTH2/OAUTHBEARER, checking tokens at `idp`."""
    server = Dovecot(tmp_path / "dovecot", users=dict(DEFAULT_USERS),
                     oauth2_introspection_url=idp.introspection_url)
    with server:
        yield server
