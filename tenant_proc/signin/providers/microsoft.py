"""Microsoft identity platform (Entra ID) tokens for Exchange Online IMAP.

- client_credentials (app-only): the SaaS app registration, consented by each customer's admin,
  authenticates with a client secret or a certificate (private_key_jwt: a JWT signed with the
  certificate's key, header x5t = the certificate's SHA-1 thumbprint, as Entra ID requires).
  No refresh token: a new access token is simply requested before the old one runs out.
- refresh_token (delegated): a refresh token from the customer's one-time consent; Entra ID
  rotates it on use, and the caller (tokens.py) stores the new one before dropping the old.
"""
from __future__ import annotations

import base64
from pathlib import Path

from tenant_proc.errors import FatalError
from tenant_proc.signin import errors
from tenant_proc.signin.providers.base import TokenResponse
from tenant_proc.signin.providers.http import libraries, request_token
from tenant_proc.spec import Secret, TenantSpec

DEFAULT_TOKEN_URL = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"
SCOPE_APP_ONLY = "https://outlook.office365.com/.default"
SCOPE_DELEGATED = "https://outlook.office365.com/.default offline_access"


def fetch(spec: TenantSpec, refresh_token: Secret | None) -> TokenResponse:
    oauth = spec.oauth
    assert oauth is not None
    secret = oauth.client_secret.reveal() if oauth.client_secret else None
    if oauth.flow == "refresh_token":
        if refresh_token is None:
            raise FatalError("config", f"{errors.who(spec)}: flow refresh_token needs refresh_token")
        params = {"refresh_token": refresh_token.reveal(), "scope": oauth.scope}
        # A public client (an app registered for "Mobile and desktop applications", or signed
        # in with the device flow) must present no secret at all, not even an empty one: Entra
        # ID refuses it with AADSTS700025. "none" sends client_id alone.
        return request_token(spec, "refresh_token", params, client_id=oauth.client_id,
                             client_secret=secret, auth_method="client_secret_post" if secret else "none",
                             secrets=[refresh_token])
    params = {"scope": oauth.scope}
    if oauth.certificate or oauth.certificate_file:
        key_pem, thumbprint = _certificate(spec)
        libraries()  # a missing authlib is a config error line, not an ImportError
        from authlib.oauth2.rfc7523 import PrivateKeyJWT

        assertion = PrivateKeyJWT(oauth.token_url, headers={"x5t": thumbprint})
        # Entra ID wants client_id in the body beside the assertion.
        return request_token(spec, "client_credentials", {**params, "client_id": oauth.client_id},
                             client_id=oauth.client_id, client_secret=key_pem,
                             auth_method=assertion, secrets=[key_pem])
    return request_token(spec, "client_credentials", params, client_id=oauth.client_id,
                         client_secret=secret)


def _certificate(spec: TenantSpec) -> tuple[str, str]:
    """(private key PEM, base64url SHA-1 thumbprint of the certificate) from the PEM bundle."""
    oauth = spec.oauth
    assert oauth is not None
    if oauth.certificate is not None:
        pem = oauth.certificate.reveal()
    else:
        try:
            pem = Path(oauth.certificate_file or "").read_text()
        except OSError as exc:
            raise FatalError("config", f"{errors.who(spec)}: cannot read certificate_file "
                                       f"{oauth.certificate_file}: {exc.strerror or exc}") from None
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except ValueError:
        raise FatalError("config", f"{errors.who(spec)}: the certificate must be PEM holding both "
                                   "the certificate and its unencrypted private key") from None
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    thumbprint = base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA1())).rstrip(b"=").decode()
    return key_pem, thumbprint
