"""OAuth tenants for the real supervisor: one `[[tenant]]` + `[tenant.oauth]` per provider/flow,
registered at the identity-provider stand-in (tests/servers/oauth/idp.py), with its secrets passed the
documented way (`*_env` variables) and listed, so a test can look for them where they must not be.

    tenant = oauth_tenant(idp, tmp_path, "google/service_account", "ms-sa")
    run = SupervisorRun(tmp_path / "run", dovecot, [tenant.entry], extra_env=tenant.env)
"""
from __future__ import annotations

import base64
import functools
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.supervisor_run import TenantEntry
from tests.servers.oauth.idp import IdentityProvider
from tests.servers.oauth.idp_grants import MICROSOFT_SCOPE, Grant
from tests.servers.oauth.idp_keys import (
    KeyPair,
    generate_rsa_key,
    write_service_account_file,
    write_token_command_credentials,
)

FLOWS = ("microsoft/client_credentials", "microsoft/refresh_token", "google/service_account",
         "google/refresh_token", "command")
DIRECTORY = "contoso.onmicrosoft.com"   # the Microsoft tenant (directory) of the test mailboxes
DOMAIN = "contoso.example"


@dataclass
class OAuthTenant:
    entry: TenantEntry
    mailbox: str
    grant: Grant
    env: dict[str, str] = field(default_factory=dict)      # secrets handed over by environment
    secrets: list[str] = field(default_factory=list)       # every secret configured for it
    private_key: KeyPair | None = None                     # google service_account


@functools.lru_cache(maxsize=1)
def _service_account_key() -> KeyPair:
    return generate_rsa_key()  # ~0.1-1 s each: one per test session is enough


def oauth_tenant(idp: IdentityProvider, workdir: Path, flow: str, tid: str, mechanism: str = "xoauth2",
                 host: str = "127.0.0.1", rotate: bool = True) -> OAuthTenant:
    """A tenant `tid` signing in as `tid@contoso.example` with `flow` (one of FLOWS)."""
    workdir.mkdir(parents=True, exist_ok=True)
    mailbox = f"{tid}@{DOMAIN}".lower()
    var = tid.upper().replace("-", "_")
    secret = "cs-" + secrets.token_urlsafe(18)
    client_id = f"{tid}-client"
    oauth: dict[str, Any] = {}
    env: dict[str, str] = {}
    key = None
    if flow == "microsoft/client_credentials":
        grant = idp.add_app(client_id, secret, mailbox)
        oauth = {"provider": "microsoft", "flow": "client_credentials", "tenant": DIRECTORY,
                 "client_id": client_id, "client_secret_env": f"{var}_SECRET",
                 "token_url": idp.microsoft_token_url(DIRECTORY)}
        env = {f"{var}_SECRET": secret}
    elif flow in ("microsoft/refresh_token", "google/refresh_token"):
        provider = flow.split("/")[0]
        grant = idp.add_refresh_grant(client_id, mailbox, client_secret=secret,
                                      rotate=rotate if provider == "microsoft" else False)
        assert grant.refresh_token is not None
        oauth = {"provider": provider, "flow": "refresh_token", "client_id": client_id,
                 "client_secret_env": f"{var}_SECRET", "refresh_token_env": f"{var}_REFRESH",
                 "token_url": idp.microsoft_token_url(DIRECTORY) if provider == "microsoft"
                 else idp.google_token_url}
        if provider == "microsoft":
            oauth["tenant"] = DIRECTORY
        env = {f"{var}_SECRET": secret, f"{var}_REFRESH": grant.refresh_token}
    elif flow == "google/service_account":
        key = _service_account_key()
        email = f"{tid}@idle-test.iam.gserviceaccount.com"
        grant = idp.add_service_account(email, key.public_pem, subjects=[mailbox])
        path = write_service_account_file(workdir / f"{tid}-service-account.json", email,
                                          idp.google_token_url, key)
        oauth = {"provider": "google", "flow": "service_account", "service_account_file": str(path),
                 "subject": mailbox, "token_url": idp.google_token_url}
    elif flow == "command":
        grant = idp.add_app(client_id, secret, mailbox)
        creds = write_token_command_credentials(
            workdir / f"{tid}-token-credentials.json", idp.microsoft_token_url(DIRECTORY), client_id,
            secret, MICROSOFT_SCOPE, ca_file=idp.ca_file if idp.tls else None)
        oauth = {"provider": "command",
                 # the file itself, not `-m tests.servers.oauth.idp_keys`: the product runs the command in a
                 # clean environment (no PYTHONPATH), as it should
                 "command": [sys.executable, str(Path(__file__).resolve().parents[1] / "servers" / "oauth" / "idp_keys.py"),
                             "print-token", str(creds)]}
    else:
        raise ValueError(f"unknown flow {flow!r}; one of {FLOWS}")
    if idp.tls and flow != "command":
        oauth["token_ca_file"] = idp.ca_file
    entry = TenantEntry(tid, mailbox, "", host=host, auth=mechanism, oauth=oauth, name=f"{tid} AB")
    return OAuthTenant(entry, mailbox, grant, env, [secret, *env.values()], key)


def sasl_forms(mailbox: str, access_token: str) -> list[str]:
    """The base64 SASL responses a token travels in (XOAUTH2 and OAUTHBEARER, RFC 7628)."""
    xoauth2 = f"user={mailbox}\x01auth=Bearer {access_token}\x01\x01"
    oauthbearer = f"n,a={mailbox},\x01auth=Bearer {access_token}\x01\x01"
    return [base64.b64encode(s.encode()).decode() for s in (xoauth2, oauthbearer)]


def private_key_lines(key: KeyPair) -> list[str]:
    """The base64 body lines of a PEM private key: any one of them leaking is a leak."""
    return [line for line in key.private_pem.decode().splitlines() if not line.startswith("-----")][1:-1]
