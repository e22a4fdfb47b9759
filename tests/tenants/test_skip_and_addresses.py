"""`[imap] skip` (issue 23) and a tenant's `skip` and `addresses` keys, from the config file, the
environment and a `companies` row (sql/008): read strictly, a bad value refused with a line
naming the key (the supervisor exits 2 for the config, one tenant fails for a row)."""
from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.children.records import diff_tenants
from supervisor.config.load import load_config
from supervisor.errors import ConfigError
from supervisor.tenants.companies import to_tenant_row
from supervisor.tenants.rows import build_tenant_specs

ROW = {"id": "acme", "host": "imap.example.com", "username": "Support@Acme.example", "password": "p",
       "security": "plain"}
RECOMMENDED = ("bounce", "auto_reply", "auto_generated", "self")


def _config(tmp_path: Path, imap: str = "", environ: dict[str, str] | None = None):
    path = tmp_path / "config.toml"
    path.write_text(f"[imap]\n{imap}\n")
    return load_config(path, environ=environ or {})


def test_the_default_hands_everything_over(tmp_path):
    config = _config(tmp_path)
    assert config.imap.skip == ()
    spec = build_tenant_specs(config, [ROW], environ={}).specs["acme"]
    assert spec.imap.skip == () and spec.addresses == ()
    assert spec.own_addresses() == ("support@acme.example",)


def test_imap_skip_from_the_file_and_the_environment(tmp_path):
    assert _config(tmp_path, 'skip = ["bounce", "Auto_Reply", "auto_generated", "self"]').imap.skip == RECOMMENDED
    env = {"IDLE_SUPERVISOR_IMAP_SKIP": "bounce, auto_reply,auto_generated,self"}
    assert _config(tmp_path, environ=env).imap.skip == RECOMMENDED
    env = {"IDLE_SUPERVISOR_IMAP_SKIP": '["list", "bulk"]'}
    assert _config(tmp_path, environ=env).imap.skip == ("list", "bulk")


@pytest.mark.parametrize("value", ['["bounces"]', '"bounce, nope"', "[1]", "true"])
def test_an_unknown_class_is_refused_not_ignored(tmp_path, value):
    with pytest.raises(ConfigError, match=r"\[imap\] skip"):
        _config(tmp_path, f"skip = {value}")


def test_a_tenant_skip_replaces_the_imap_one_for_that_tenant(tmp_path):
    config = _config(tmp_path, 'skip = ["bounce"]')
    rows = [{**ROW, "skip": ["list", "bulk"]}, {**ROW, "id": "none", "skip": []}, {**ROW, "id": "other"}]
    load = build_tenant_specs(config, rows, environ={})
    assert not load.errors, load.errors
    assert load.specs["acme"].imap.skip == ("list", "bulk")
    assert load.specs["none"].imap.skip == ()  # an empty list: everything goes over
    assert load.specs["other"].imap.skip == ("bounce",)
    # a changed list restarts only that tenant on reload
    after = build_tenant_specs(config, [{**rows[0], "skip": ["list"]}, *rows[1:]], environ={}).specs
    diff = diff_tenants(load.specs, after)
    assert diff.changed == ("acme",) and set(diff.unchanged) == {"none", "other"}


def test_addresses_from_a_list_or_text(tmp_path):
    config = _config(tmp_path)
    rows = [{**ROW, "addresses": ["Help@Acme.example", " <info@acme.example> ", "help@acme.example"]},
            {**ROW, "id": "text", "addresses": "help@acme.example, sales@acme.example"}]
    specs = build_tenant_specs(config, rows, environ={}).specs
    assert specs["acme"].addresses == ("help@acme.example", "info@acme.example")
    assert specs["acme"].own_addresses() == ("support@acme.example", "help@acme.example", "info@acme.example")
    assert specs["text"].addresses == ("help@acme.example", "sales@acme.example")
    assert specs["acme"].public_info()["addresses"] == ["help@acme.example", "info@acme.example"]


@pytest.mark.parametrize("key, value, message", [
    ("addresses", ["not an address"], "addresses: 'not an address' is not an email address"),
    ("addresses", [1], "addresses must be a list"),
    ("skip", ["bounce", "spam"], "skip: unknown class 'spam'"),
    ("skip", 5, "skip must be a list"),
])
def test_a_bad_row_fails_that_tenant_naming_the_key(tmp_path, key, value, message):
    load = build_tenant_specs(_config(tmp_path), [{**ROW, key: value}, {**ROW, "id": "ok"}], environ={})
    assert set(load.specs) == {"ok"}
    ((_name, reason),) = load.errors.values()
    assert reason.startswith(message), reason


def test_companies_columns_become_the_keys(tmp_path):
    row = {"id": "acme", "name": "Acme AB", "imap_host": "imap.example.com", "imap_username": "support@acme.example",
           "imap_password": "p", "imap_security": "plain", "active": True,
           "addresses": ["help@acme.example"], "skip": ["bounce", "self"]}
    tenant = to_tenant_row(row)
    assert tenant["addresses"] == ["help@acme.example"] and tenant["skip"] == ["bounce", "self"]
    spec = build_tenant_specs(_config(tmp_path, 'skip = ["list"]'), [tenant], environ={}).specs["acme"]
    assert spec.imap.skip == ("bounce", "self") and spec.addresses == ("help@acme.example",)
    # NULL columns (or a database before sql/008): the [imap] skip, no addresses
    bare = to_tenant_row({**row, "addresses": None, "skip": None})
    spec = build_tenant_specs(_config(tmp_path, 'skip = ["list"]'), [bare], environ={}).specs["acme"]
    assert spec.imap.skip == ("list",) and spec.addresses == ()
