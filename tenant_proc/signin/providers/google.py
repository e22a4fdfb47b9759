"""Google Workspace tokens for Gmail IMAP.

- service_account: a service account with domain-wide delegation signs a JWT (RS256, authlib)
  asserting "act as <subject>" and trades it at the token endpoint (RFC 7523 JWT bearer grant).
  The Workspace counterpart of Microsoft's app-only access; no refresh token involved.
- refresh_token: an OAuth client's refresh token from the user's consent (client_id,
  client_secret, refresh_token). Google rarely rotates it, but a new one is stored if sent.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tenant_proc.errors import FatalError
from tenant_proc.signin import errors
from tenant_proc.signin.providers.base import TokenResponse
from tenant_proc.signin.providers.http import libraries, request_token
from tenant_proc.spec import Secret, TenantSpec

DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"
SCOPE = "https://mail.google.com/"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # Google's maximum


def fetch(spec: TenantSpec, refresh_token: Secret | None) -> TokenResponse:
    oauth = spec.oauth
    assert oauth is not None
    if oauth.flow == "refresh_token":
        if refresh_token is None:
            raise FatalError("config", f"{errors.who(spec)}: flow refresh_token needs refresh_token")
        secret = oauth.client_secret.reveal() if oauth.client_secret else None
        return request_token(spec, "refresh_token",
                             {"refresh_token": refresh_token.reveal(), "scope": oauth.scope},
                             client_id=oauth.client_id, client_secret=secret,
                             secrets=[refresh_token])
    key = _service_account(spec)
    assertion = _assertion(spec, key)
    return request_token(spec, JWT_BEARER, {"assertion": assertion}, auth_method="none",
                         secrets=[key["private_key"], assertion])


def _service_account(spec: TenantSpec) -> dict[str, Any]:
    """The service account key (client_email, private_key, private_key_id)."""
    oauth = spec.oauth
    assert oauth is not None
    try:
        if oauth.service_account_json is not None:
            text = oauth.service_account_json.reveal()
        else:
            text = Path(oauth.service_account_file or "").read_text()
        key = json.loads(text)
    except OSError as exc:
        raise FatalError("config", f"{errors.who(spec)}: cannot read service_account_file "
                                   f"{oauth.service_account_file}: {exc.strerror or exc}") from None
    except ValueError:
        raise FatalError("config", f"{errors.who(spec)}: the service account key is not JSON") from None
    if not isinstance(key, dict) or not all(isinstance(key.get(k), str) for k in ("client_email", "private_key")):
        raise FatalError("config", f"{errors.who(spec)}: the service account key lacks client_email "
                                   "or private_key (download a JSON key for the service account)")
    return key


def _assertion(spec: TenantSpec, key: dict[str, Any]) -> str:
    oauth = spec.oauth
    assert oauth is not None
    libraries()  # a missing authlib is a config error line, not an ImportError
    from authlib.oauth2.rfc7523 import JWTBearerGrant
    from joserfc.jwk import RSAKey

    header = {"alg": "RS256"}
    if isinstance(key.get("private_key_id"), str):
        header["kid"] = key["private_key_id"]
    now = int(time.time())
    try:
        signed = JWTBearerGrant.sign(
            RSAKey.import_key(key["private_key"]), issuer=key["client_email"], audience=oauth.token_url,
            subject=oauth.subject or spec.username, issued_at=now,
            expires_at=now + ASSERTION_LIFETIME, claims={"scope": oauth.scope}, header=header,
        )
    except Exception:  # a malformed key: the library's text could quote it
        raise FatalError("config", f"{errors.who(spec)}: the service account's private_key cannot "
                                   "sign (not an RSA key in PEM form?)") from None
    return signed.decode() if isinstance(signed, bytes) else signed
