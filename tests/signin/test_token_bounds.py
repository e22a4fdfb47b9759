"""Issue 22 item 2, sign-in's part: every token request and token-store request of a company
process ends within its bound as a whole, reads at most 64 KB of an answer, and the token
command keeps the tenant beating; token_timeout's cap follows heartbeat_timeout.

The misbehaving token endpoint and Supabase are tests/servers/hostile_http.py: a real HTTP
server trickling its answer a byte every 0.5 s, or answering 64 MB.
"""
from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import sys
import time
from pathlib import Path

import pytest

from supervisor.config.load import load_config
from supervisor.tenants.rows import build_tenant_specs
from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.signin.providers import provider_for
from tenant_proc.signin.storage import open_token_store
from tenant_proc.signin.tokens import TokenSource
from tenant_proc.spec import Secret, StateSpec
from tenant_proc.store.api import StoreError
from tests.harness.forked import peak_rss_growth
from tests.servers.hostile_http import MB, Answer, HostileHttp
from tests.signin.test_signin import oauth_spec, tenant

TOKEN = json.dumps({"access_token": "at-1", "expires_in": 3600, "token_type": "Bearer"}).encode()


def _microsoft(url: str, tmp_path: Path, token_timeout: float = 2):
    return tenant(oauth_spec({"provider": "microsoft", "tenant": "contoso", "client_id": "app-1",
                              "client_secret": "app-secret", "token_timeout": token_timeout,
                              "token_url": f"{url}/contoso/oauth2/v2.0/token"}), tmp_path)


def test_a_trickling_token_endpoint_is_cut_at_token_timeout(tmp_path):
    """httpx's own timeout (per socket read) let this run until the endpoint stopped (30 s)."""
    with HostileHttp(Answer(200, TOKEN, trickle=0.5)) as endpoint:
        started = time.monotonic()
        with pytest.raises(ConnectionLost) as cut:
            provider_for(_microsoft(endpoint.url, tmp_path))(None)
        assert time.monotonic() - started < 5  # 2 s budget; generous for a loaded machine
    assert "timed out after 2s" in str(cut.value)


def test_a_64_mb_token_answer_is_refused_after_64_kb(tmp_path):
    hostile = Answer(200, TOKEN[:-1] + b', "pad": "', filler=64 * MB)
    with HostileHttp(Answer(200, TOKEN)) as fine, HostileHttp(hostile) as endpoint:
        spec = _microsoft(endpoint.url, tmp_path, token_timeout=10)
        usual = _microsoft(fine.url, tmp_path, token_timeout=10)
        growth, outcome = peak_rss_growth(lambda: provider_for(spec)(None),
                                          warmup=lambda: provider_for(usual)(None))
    assert growth < 4 * MB, f"the process grew by {growth / MB:.1f} MB"
    assert outcome.startswith("ConnectionLost") and "answered more than 65536 bytes" in outcome, outcome


def test_a_compressed_token_answer_is_refused(tmp_path):
    """64 KB of gzip can inflate to 64 MB: the request asks for identity and holds to it."""
    answer = Answer(200, gzip.compress(TOKEN), headers=(("Content-Encoding", "gzip"),))
    with HostileHttp(answer) as endpoint:
        with pytest.raises(ConnectionLost, match="Content-Encoding gzip"):
            provider_for(_microsoft(endpoint.url, tmp_path))(None)
        [request] = endpoint.seen()
    assert request.headers["Accept-Encoding"] == "identity"


def _command_tenant(tmp_path: Path, program: str, token_timeout: float = 10):
    return tenant(oauth_spec({"provider": "command", "token_timeout": token_timeout,
                              "command": [sys.executable, "-c", program]}), tmp_path)


def test_the_token_command_keeps_the_tenant_beating(tmp_path):
    beats: list[float] = []
    spec = _command_tenant(tmp_path, "import time; time.sleep(3); print('cmd-token')")
    source = TokenSource(spec, keepalive=lambda: beats.append(time.monotonic()))
    assert source.for_login().value.reveal() == "cmd-token"
    gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
    assert len(beats) >= 4 and max(gaps) < 1.6, f"beats {len(beats)}, longest silence {max(gaps):.1f}s"


def test_64_mb_from_the_token_command_costs_the_tenant_at_most_a_little(tmp_path):
    program = ("import sys; w = sys.stdout.buffer\n"
               "for _ in range(1024): w.write(b'x' * 65536)\n")
    spec = _command_tenant(tmp_path, program)
    usual = _command_tenant(tmp_path, "print('t')")
    growth, outcome = peak_rss_growth(lambda: provider_for(spec)(None),
                                      warmup=lambda: provider_for(usual)(None))
    assert outcome.startswith(("TokenResponse", "FatalError")), outcome
    assert growth < 4 * MB, f"the process grew by {growth / MB:.1f} MB"


def test_the_supabase_token_store_is_bounded_as_a_whole(tmp_path):
    with HostileHttp(Answer(200, b"[]", trickle=0.5)) as supabase:
        spec = dataclasses.replace(
            _command_tenant(tmp_path, "print('t')"),
            state=StateSpec(backend="supabase", supabase_url=supabase.url,
                            supabase_key=Secret("service-key"), request_timeout=1.5))
        store = open_token_store(spec)
        started = time.monotonic()
        with pytest.raises(StoreError) as cut:
            store.load("contoso")
        assert time.monotonic() - started < 5  # 1.5 s bound; generous for a loaded machine
    assert "timed out" in str(cut.value) and "service-key" not in str(cut.value)


def _specs(tmp_path: Path, heartbeat_timeout: float, oauth: dict) -> tuple[dict, dict]:
    path = tmp_path / "config.toml"
    path.write_text(f'[supervisor]\nstate_dir = "{tmp_path}"\nheartbeat_timeout = {heartbeat_timeout}\n'
                    '[imap]\nconnect_timeout = 2\ncommand_timeout = 2\n')
    row = {"id": "contoso", "host": "h", "username": "u", "auth": "xoauth2",
           "oauth": {"provider": "command", "command": ["get-token"], **oauth}}
    load = build_tenant_specs(load_config(path), [row], environ={})
    return load.specs, load.errors


def test_token_timeout_may_not_exceed_the_request_bound_of_heartbeat_timeout(tmp_path):
    # heartbeat_timeout 8 s, heartbeat_interval derived 8/6 s: the bound is (8 - 8/6) / 2 = 3.33 s.
    specs, errors = _specs(tmp_path, 8, {"token_timeout": 5})
    assert not specs and "token_timeout must be a number of seconds from 1 to 3.33333" in errors["contoso"][1]
    assert "heartbeat_timeout" in errors["contoso"][1]
    specs, errors = _specs(tmp_path, 8, {})  # unset: follows heartbeat_timeout down, not refused
    assert specs["contoso"].oauth.token_timeout == pytest.approx(10 / 3)
    assert specs["contoso"].request_bound == pytest.approx(10 / 3)
    specs, errors = _specs(tmp_path, 60, {"token_timeout": 27})  # (60 - 5) / 2 = 27.5
    assert specs["contoso"].oauth.token_timeout == 27
    specs, errors = _specs(tmp_path, 60, {"token_timeout": 28})
    assert "from 1 to 27.5" in errors["contoso"][1]


def test_a_failing_token_command_still_names_its_last_error_line(tmp_path):
    program = ("import sys; w = sys.stderr.buffer\n"
               "for _ in range(64): w.write(b'noise\\n' * 10000)\n"
               "w.write(b'vault sealed\\n'); sys.exit(2)")
    with pytest.raises(FatalError, match="exited with status 2: vault sealed"):
        provider_for(_command_tenant(tmp_path, program))(None)
