"""Proof Key for Code Exchange (RFC 7636) and the state of one browser sign-in.

The verifier stays in this process (it is sent only to the token endpoint, with the code), the
challenge (its SHA-256) goes out in the authorization URL: whoever catches the redirect's code
cannot redeem it without the verifier. The state ties the redirect to this very attempt.
"""
from __future__ import annotations

import base64
import hashlib
import secrets

from tenant_proc.spec import Secret

VERIFIER_BYTES = 48  # 64 base64url characters; RFC 7636 4.1 allows 43 to 128
STATE_BYTES = 24


def new_verifier() -> Secret:
    return Secret(secrets.token_urlsafe(VERIFIER_BYTES))


def challenge(verifier: Secret) -> str:
    """code_challenge for code_challenge_method=S256: BASE64URL(SHA256(ASCII(verifier)))."""
    digest = hashlib.sha256(verifier.reveal().encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    return secrets.token_urlsafe(STATE_BYTES)
