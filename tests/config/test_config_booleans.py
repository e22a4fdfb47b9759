"""Booleans are parsed strictly (issue 12 item 12): `allow_insecure = "false"` from a Supabase
text column or the environment is false, not true; anything but true/false is refused with a
line naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config.load import load_config
from supervisor.errors import ConfigError
from supervisor.tenants.rows import build_tenant_specs

ROW = {"id": "acme", "host": "imap.example.com", "username": "u", "password": "p", "security": "plain"}


def _config(tmp_path: Path, text: str = "[supervisor]\n", environ: dict[str, str] | None = None):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, environ=environ or {})


@pytest.mark.parametrize("value, expected", [
    ("false", False), ("FALSE", False), (" False ", False), (False, False),
    ("true", True), ("True", True), (True, True),
])
def test_allow_insecure_text_is_read_as_written(tmp_path, value, expected):
    load = build_tenant_specs(_config(tmp_path), [{**ROW, "allow_insecure": value}], environ={})
    assert not load.errors, load.errors
    assert load.specs["acme"].allow_insecure is expected


@pytest.mark.parametrize("value", ["yes", "0", "1", "", "no", 1, 0, None])
def test_allow_insecure_anything_else_is_refused_naming_the_key(tmp_path, value):
    load = build_tenant_specs(_config(tmp_path), [{**ROW, "allow_insecure": value}], environ={})
    assert not load.specs
    ((name, reason),) = load.errors.values()
    assert reason.startswith("allow_insecure must be true or false"), reason


@pytest.mark.parametrize("text, expected", [("false", False), ("False", False), ("TRUE", True)])
def test_cluster_enabled_from_the_environment(tmp_path, text, expected):
    environ = {"IDLE_SUPERVISOR_CLUSTER_ENABLED": text,
               "SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_SERVICE_ROLE_KEY": "k"}
    config = _config(tmp_path, "[tenants]\nsource = \"supabase\"\n", environ)
    assert config.cluster.enabled is expected


@pytest.mark.parametrize("text", ["yes", "1", "enabled"])
def test_cluster_enabled_refuses_other_text(tmp_path, text):
    environ = {"IDLE_SUPERVISOR_CLUSTER_ENABLED": text}
    with pytest.raises(ConfigError, match=r"\[cluster\] enabled must be true or false"):
        _config(tmp_path, environ=environ)
    with pytest.raises(ConfigError, match=r"\[cluster\] enabled must be true or false"):
        _config(tmp_path, f"[cluster]\nenabled = \"{text}\"\n")
