"""The SQLite store (checkpoints, ledger, rotated refresh tokens) in a state_dir another local
account could reach: a link planted where SQLite opens a file is refused, never followed, and
the directory is this user's and 0700 (tenant_proc/private_files.py).

Before: prepare_file() created the database through a dangling link (its target appeared), and
SQLite wrote the ledger wherever the link pointed.
"""
from __future__ import annotations

import os
import stat

import pytest

from tenant_proc.signin.storage import SqliteTokenStore
from tenant_proc.spec import Secret
from tenant_proc.store.api import StoreError
from tenant_proc.store.sqlite import DB_NAME, SqliteStore


def test_a_link_at_the_database_is_refused_and_its_target_never_created(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    target = tmp_path / "elsewhere" / "victim.db"
    target.parent.mkdir()
    (state_dir / DB_NAME).symlink_to(target)
    with pytest.raises(StoreError, match="is a symbolic link: refusing to follow it"):
        SqliteStore(state_dir / DB_NAME)
    with pytest.raises(StoreError, match="is a symbolic link"):
        SqliteTokenStore(state_dir / DB_NAME).save("acme", Secret("refresh-token"), "seed")
    assert not target.exists()


@pytest.mark.parametrize("companion", ["-wal", "-shm", "-journal"])
def test_a_link_beside_the_database_is_refused(tmp_path, companion):
    state_dir = tmp_path / "state"
    SqliteStore(state_dir / DB_NAME).close()  # a real store first, as after a clean stop
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    link = state_dir / (DB_NAME + companion)
    if link.exists():
        link.unlink()
    link.symlink_to(target)
    with pytest.raises(StoreError, match=f"{DB_NAME}{companion} is a symbolic link"):
        SqliteStore(state_dir / DB_NAME)
    assert target.read_bytes() == b"precious"


def test_a_wide_state_dir_and_database_are_made_private(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.chmod(state_dir, 0o755)
    (state_dir / DB_NAME).touch(mode=0o644)
    os.chmod(state_dir / DB_NAME, 0o644)
    SqliteStore(state_dir / DB_NAME).close()
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / DB_NAME).stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_state_dir_of_another_user_is_refused(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, 65534, 65534)
    with pytest.raises(StoreError, match=f"state_dir {state_dir} belongs to uid 65534"):
        SqliteStore(state_dir / DB_NAME)
    assert not (state_dir / DB_NAME).exists()


@pytest.mark.integration
def test_a_tenant_meeting_a_link_at_the_database_fails_with_one_line(dovecot, tmp_path):
    """Through the real supervisor: a config error (`failed` with that line, the long backoff),
    not a crash loop, and the link's target is never created."""
    from tests.harness.supervisor_run import SupervisorRun, TenantEntry

    dovecot.add_user("acme", "acme-pw")
    run = SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")])
    run.state_dir.mkdir(mode=0o700)
    target = tmp_path / "victim.db"
    (run.state_dir / DB_NAME).symlink_to(target)
    with run.start():
        line = run.tenant("acme")["last_error"]
        assert f"{DB_NAME} is a symbolic link: refusing to follow it" in line, line
        assert run.tenant("acme")["state"] == "failed" and run.tenant("acme")["restarts"] == 0
    assert not target.exists()
    assert "crashed:" not in run.log_text()
