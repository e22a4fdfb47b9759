"""Config loading: defaults, validation errors as one clear line, per-tenant isolation."""
from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config.load import load_config
from supervisor.errors import ConfigError
from supervisor.tenants.rows import build_tenant_specs

GOOD = """
[supervisor]
state_dir = "state"
restart_backoff = 2
[handler]
target = "tenant_proc.handlers:jsonl"
path = "state/emails.jsonl"
[[tenant]]
id = "acme"
name = "Acme AB"
host = "127.0.0.1"
port = 993
username = "alice"
password_env = "ACME_PW"
[[tenant]]
id = "beta"
host = "127.0.0.1"
username = "bob"
password = "bob-pw"
security = "starttls"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_and_relative_state_dir(tmp_path):
    config = load_config(write(tmp_path, GOOD), environ={"ACME_PW": "s3cret"})
    assert config.supervisor.state_dir == str(tmp_path / "state")
    assert config.supervisor.restart_backoff == 2.0
    assert config.supervisor.heartbeat_timeout == 30.0 and config.imap.idle_timeout == 1740
    assert config.handler.options_dict() == {"path": "state/emails.jsonl"}
    load = build_tenant_specs(config, config.raw_tenants, environ={"ACME_PW": "s3cret"})
    assert set(load.specs) == {"acme", "beta"} and not load.errors
    acme = load.specs["acme"]
    assert acme.password.reveal() == "s3cret" and "s3cret" not in repr(acme)
    assert load.specs["beta"].port == 143 and load.specs["beta"].name == "beta"


def test_provider_defaults_dedupe_on_and_missing_uid_timeout(tmp_path):
    """Issue 21: Message-ID deduplication on for 7 days unless turned off; a UID the server
    lists but does not return is given up after an hour; both from the environment too."""
    config = load_config(write(tmp_path, GOOD), environ={})
    assert config.imap.dedupe_window == 604800.0 and config.imap.missing_uid_timeout == 3600.0
    load = build_tenant_specs(config, config.raw_tenants, environ={"ACME_PW": "x"})
    assert load.specs["acme"].imap.dedupe_window == 604800.0
    config = load_config(write(tmp_path, GOOD), environ={
        "IDLE_SUPERVISOR_IMAP_DEDUPE_WINDOW": "0", "IDLE_SUPERVISOR_IMAP_MISSING_UID_TIMEOUT": "900"})
    assert config.imap.dedupe_window == 0.0 and config.imap.missing_uid_timeout == 900.0


def test_missing_password_env_fails_only_that_tenant(tmp_path):
    config = load_config(write(tmp_path, GOOD), environ={})
    load = build_tenant_specs(config, config.raw_tenants, environ={})
    assert set(load.specs) == {"beta"}
    name, reason = load.errors["acme"]
    assert name == "Acme AB" and "ACME_PW is not set" in reason


@pytest.mark.parametrize("text, message", [
    ("[supervisor\n", "not valid TOML"),
    ("[supervisor]\nrestart_backof = 3\n", "unknown key 'restart_backof'"),
    ("[supervisor]\nrestart_backoff = 'x'\n", "restart_backoff must be a number"),
    ("[imap]\nbackfill = 'some'\n", "backfill must be one of"),
    ("[imap]\nmissing_uid_timeout = 0\n", "missing_uid_timeout must be above 0"),
    ("[handler]\ntarget = 'nocolon'\n", "module:callable"),
    ("[bogus]\n", "unknown config section"),
])
def test_config_errors_are_one_clear_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("row, message", [
    ({"id": "x", "host": "h", "password": "p"}, "missing or empty field 'username'"),
    ({"id": "x", "host": "h", "username": "u", "password": "p", "security": "ssl"}, "security must be"),
    ({"id": "x", "host": "h", "username": "u", "password": "p", "port": 70000}, "port must be"),
    ({"id": "bad id", "host": "h", "username": "u", "password": "p"}, "id may only use"),
    ({"id": "x", "host": "h", "username": "u"}, "needs password_env"),
    ({"id": "x", "host": "h", "username": "u", "password": "p", "colour": 1}, "unknown key"),
])
def test_bad_tenant_rows(tmp_path, row, message):
    config = load_config(write(tmp_path, "[supervisor]\n"))
    load = build_tenant_specs(config, [row], environ={})
    assert not load.specs
    (reason,) = [r for _, r in load.errors.values()]
    assert message in reason


def test_duplicate_ids_are_rejected(tmp_path):
    config = load_config(write(tmp_path, "[supervisor]\n"))
    row = {"id": "x", "host": "h", "username": "u", "password": "p"}
    load = build_tenant_specs(config, [row, dict(row)], environ={})
    assert "duplicate" in load.errors["x"][1] and not load.specs


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_unset_timeouts_follow_a_lowered_heartbeat_timeout(tmp_path):
    """Derive, don't refuse: only heartbeat_timeout set, the values tied to it follow it down."""
    config = load_config(write(tmp_path, "[supervisor]\nheartbeat_timeout = 5\n"))
    s, imap = config.supervisor, config.imap
    assert s.heartbeat_timeout == 5
    assert 0 < s.heartbeat_interval < 5 and imap.connect_timeout < 5 and imap.command_timeout < 5
    assert imap.connect_timeout == pytest.approx(5 * 2 / 3)
    assert imap.command_timeout == pytest.approx(5 * 5 / 6)
    # Nothing set: exactly the documented defaults.
    defaults = load_config(write(tmp_path, "[supervisor]\n"))
    assert (defaults.supervisor.heartbeat_interval, defaults.imap.connect_timeout,
            defaults.imap.command_timeout) == (5.0, 20.0, 25.0)


def test_a_set_socket_timeout_raises_an_unset_heartbeat_timeout(tmp_path):
    config = load_config(write(tmp_path, "[imap]\ncommand_timeout = 60\n"))
    assert config.supervisor.heartbeat_timeout > 60
    assert config.imap.connect_timeout == 20.0  # unset, and already below


def test_only_values_the_user_set_that_contradict_are_refused_naming_both(tmp_path):
    with pytest.raises(ConfigError, match=r"\[imap\] command_timeout \(25s\).*"
                                          r"\[supervisor\] heartbeat_timeout \(20s\)"):
        load_config(write(tmp_path, "[supervisor]\nheartbeat_timeout = 20\n[imap]\ncommand_timeout = 25\n"))
    config = load_config(write(tmp_path, "[supervisor]\nheartbeat_timeout = 20\n[imap]\n"
                                         "command_timeout = 10\nconnect_timeout = 10\n"))
    assert config.supervisor.heartbeat_timeout == 20
    with pytest.raises(ConfigError, match=r"heartbeat_timeout \(4s\) must be above heartbeat_interval \(5s\)"):
        load_config(write(tmp_path, "[supervisor]\nheartbeat_timeout = 4\nheartbeat_interval = 5\n"))
    # The same contradiction through the environment (Railway) names the same keys.
    with pytest.raises(ConfigError, match="connect_timeout"):
        load_config(write(tmp_path, "[supervisor]\nheartbeat_timeout = 8\n"),
                    environ={"IDLE_SUPERVISOR_IMAP_CONNECT_TIMEOUT": "9"})


def test_default_handler_without_configuration(tmp_path, monkeypatch):
    """jsonl without `path` writes <state_dir>/emails.jsonl; with companies from Supabase and no
    [handler] at all, mail goes to the `emails` table (supabase_insert)."""
    config = load_config(write(tmp_path, "[supervisor]\nstate_dir = \"st\"\n"))
    assert config.handler.target == "tenant_proc.handlers:jsonl"
    assert config.handler.options_dict() == {"path": str(tmp_path / "st" / "emails.jsonl")}
    monkeypatch.chdir(tmp_path)
    env = {"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_SERVICE_ROLE_KEY": "k"}
    config = load_config(None, env)
    assert config.handler.target == "tenant_proc.handlers:supabase_insert"
    assert config.handler.options_dict() == {}
    config = load_config(None, {**env, "IDLE_SUPERVISOR_HANDLER_PATH": "/data/e.jsonl"})
    assert config.handler.target == "tenant_proc.handlers:jsonl"  # a handler key set: jsonl
    assert config.handler.options_dict() == {"path": "/data/e.jsonl"}


def test_environment_alone_configures_everything(tmp_path, monkeypatch):
    """Railway: no file, IDLE_SUPERVISOR_<SECTION>_<KEY> variables and SUPABASE_* only."""
    from supervisor.config.env import resolve_config_path

    monkeypatch.chdir(tmp_path)
    env = {"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_SERVICE_ROLE_KEY": "service-key",
           "IDLE_SUPERVISOR_SUPERVISOR_RESTART_BACKOFF": "15",
           "IDLE_SUPERVISOR_IMAP_BACKFILL": "unseen",
           "IDLE_SUPERVISOR_HANDLER_TARGET": "tenant_proc.handlers:log",
           "IDLE_SUPERVISOR_HANDLER_PATH": "/data/emails.jsonl",
           "IDLE_SUPERVISOR_LOG_LEVEL": "debug"}
    assert resolve_config_path(None, env) is None
    config = load_config(None, env)
    assert config.path == "(environment)"
    assert config.supervisor.restart_backoff == 15.0 and config.imap.backfill == "unseen"
    assert config.tenants.source == "supabase" and config.state.backend == "supabase"
    assert config.handler.target == "tenant_proc.handlers:log"
    assert config.handler.options_dict() == {"path": "/data/emails.jsonl"}
    assert config.supervisor.state_dir == str(tmp_path / "state")
    assert "service-key" not in repr(config)


def test_environment_overrides_a_file(tmp_path):
    config = load_config(write(tmp_path, GOOD), environ={"IDLE_SUPERVISOR_IMAP_POLL_INTERVAL": "7"})
    assert config.imap.poll_interval == 7.0 and config.supervisor.restart_backoff == 2.0


def test_no_config_at_all_is_one_clear_line():
    from supervisor.config.env import resolve_config_path

    with pytest.raises(ConfigError, match="no config"):
        resolve_config_path(None, {})
    with pytest.raises(ConfigError, match="IDLE_SUPERVISOR_BOGUS_X"):
        load_config(None, {"IDLE_SUPERVISOR_BOGUS_X": "1"})
