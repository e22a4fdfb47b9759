"""Per-tenant Message-ID deduplication window (issue 12 item 5): `dedupe_window` as a key of one
[[tenant]] entry or a `companies.dedupe_window` column (sql/007) overrides the global
`[imap] dedupe_window` (on by default since issue 21: 7 days) for that tenant only. The same
email re-appended under a new UID is `duplicate` for a tenant with the window and handed over
twice for one whose window is 0."""
from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from supervisor.children.records import diff_tenants
from supervisor.config.load import load_config
from supervisor.tenants.rows import build_tenant_specs
from tests.harness.supervisor_run import SupabaseRun, SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message

ROW = {"id": "acme", "host": "imap.example.com", "username": "u", "password": "p", "security": "plain"}
MESSAGE_ID = "<reupload@dedupe.test>"


def _config(tmp_path: Path, imap: str = ""):
    path = tmp_path / "config.toml"
    path.write_text(f"[imap]\n{imap}\n")
    return load_config(path, environ={})


# ---- validation (pure) ---------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(3600, 3600.0), (0.5, 0.5), ("3600", 3600.0),
                                             (" 90.5 ", 90.5), ("0", 0.0), (0, 0.0)])
def test_a_tenant_window_overrides_the_global_one(tmp_path, value, expected):
    config = _config(tmp_path, "dedupe_window = 60")
    load = build_tenant_specs(config, [{**ROW, "dedupe_window": value}, {**ROW, "id": "other"}], environ={})
    assert not load.errors, load.errors
    assert load.specs["acme"].imap.dedupe_window == expected
    assert load.specs["other"].imap.dedupe_window == 60.0  # the global value where unset
    assert load.specs["acme"].imap.batch_size == config.imap.batch_size  # the rest untouched


@pytest.mark.parametrize("value", ["1h", "", "-5", "nan", "inf", "1e3", "1_000", -1, float("inf"),
                                   True, [60]])
def test_a_bad_window_fails_that_tenant_naming_the_key(tmp_path, value):
    load = build_tenant_specs(_config(tmp_path), [{**ROW, "dedupe_window": value}, {**ROW, "id": "ok"}],
                              environ={})
    assert set(load.specs) == {"ok"}
    ((_name, reason),) = load.errors.values()
    assert reason.startswith("dedupe_window must be a number of seconds"), reason


def test_a_changed_window_is_a_changed_tenant_for_the_reload_diff(tmp_path):
    config = _config(tmp_path)
    rows = [{**ROW, "dedupe_window": 60}, {**ROW, "id": "other"}]
    before = build_tenant_specs(config, rows, environ={}).specs
    after = build_tenant_specs(config, [{**rows[0], "dedupe_window": 120}, rows[1]], environ={}).specs
    diff = diff_tenants(before, after)
    assert diff.changed == ("acme",) and diff.unchanged == ("other",)


# ---- real supervisor, real Dovecot ---------------------------------------------------------

def _ledger(state_dir: Path) -> dict[str, list[tuple[int, str]]]:
    db = sqlite3.connect(state_dir / "checkpoints.sqlite3")
    try:
        rows = db.execute("SELECT tenant_id, uid, status FROM ledger ORDER BY tenant_id, uid").fetchall()
    finally:
        db.close()
    out: dict[str, list[tuple[int, str]]] = {}
    for tenant_id, uid, status in rows:
        out.setdefault(tenant_id, []).append((uid, status))
    return out


def _wait(predicate, timeout: float, what: str, run: SupervisorRun):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{run.log_text()[-3000:]}")


@pytest.mark.integration
def test_the_window_of_one_tenant_dedupes_its_reupload_only(dovecot, tmp_path):
    dovecot.add_user("dd-on", "on-pw")
    dovecot.add_user("dd-off", "off-pw")
    tenants = [TenantEntry("on", "dd-on", "on-pw", extra={"dedupe_window": 3600}),
               TenantEntry("off", "dd-off", "off-pw", extra={"dedupe_window": 0})]
    with SupervisorRun(tmp_path / "run", dovecot, tenants).start() as run:
        for user in ("dd-on", "dd-off"):
            dovecot.deliver(user, make_message("original", message_id=MESSAGE_ID))
        run.wait_emails(1, tenant="on")
        run.wait_emails(1, tenant="off")
        # The same email again, under a new UID (an Outlook add-in's re-upload).
        for user in ("dd-on", "dd-off"):
            dovecot.deliver(user, make_message("original", message_id=MESSAGE_ID))
        ledger = _wait(lambda: (lambda l: l if len(l.get("on", [])) == 2 and len(l.get("off", [])) == 2
                                else None)(_ledger(run.state_dir)), 20, "both second copies recorded", run)
        assert [s for _, s in ledger["on"]] == ["processed", "duplicate"]
        assert [s for _, s in ledger["off"]] == ["processed", "processed"]
        time.sleep(1)  # a duplicate handed over late would show up now
        by_tenant = {t: [e["uid"] for e in run.emails() if e["tenant_id"] == t] for t in ("on", "off")}
        assert by_tenant == {"on": [1], "off": [1, 2]}

        # A changed window on SIGHUP restarts that tenant only.
        pids = run.child_pids()
        run.tenants[1].extra = {"dedupe_window": 3600}
        run.write_config()
        run.signal(signal.SIGHUP)
        status = run.wait_for(lambda s: s["tenants"]["off"]["pid"] != pids["off"]
                              and s["tenants"]["off"]["state"] == "idle", 20, "off restarted")
        assert status["tenants"]["on"]["pid"] == pids["on"]
        dovecot.deliver("dd-off", make_message("original", message_id=MESSAGE_ID))
        ledger = _wait(lambda: (lambda l: l if len(l["off"]) == 3 else None)(_ledger(run.state_dir)),
                       20, "third copy recorded", run)
        assert ledger["off"][-1] == (3, "duplicate")


@pytest.mark.integration
@pytest.mark.slow
def test_the_companies_column_sets_the_window(dovecot, pg_db, postgrest, tmp_path):
    for cid, window in (("sb-on", None), ("sb-off", "0")):  # NULL: the [imap] default, on
        dovecot.add_user(cid, f"{cid}-pw")
        pg_db.execute(
            "INSERT INTO companies (id, name, imap_host, imap_port, imap_security, imap_username, "
            "imap_password, dedupe_window) VALUES (%s, %s, '127.0.0.1', %s, 'tls', %s, %s, %s)",
            (cid, cid, dovecot.imaps_port, cid, f"{cid}-pw", window))
    run = SupabaseRun(tmp_path / "run", dovecot, [], supervisor={"tenant_refresh": 300}, api=postgrest)
    with run.start(wait_running=False):
        run.wait_tenants({"sb-on", "sb-off"})
        query = "SELECT company_id, uid, status FROM processed_emails ORDER BY company_id, uid"
        for copy in (1, 2):
            for cid in ("sb-on", "sb-off"):
                dovecot.deliver(cid, make_message("original", message_id=MESSAGE_ID))
            _wait(lambda: len([r for r in pg_db.execute(query) if r[2] in ("processed", "duplicate")])
                  == 2 * copy, 20, f"copy {copy} recorded", run)
        assert pg_db.execute(query) == [("sb-off", 1, "processed"), ("sb-off", 2, "processed"),
                                        ("sb-on", 1, "processed"), ("sb-on", 2, "duplicate")]
