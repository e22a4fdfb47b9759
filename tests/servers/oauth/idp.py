"""An OAuth2 identity-provider stand-in for tests (test infrastructure, never shipped).

It speaks the token endpoints the way Microsoft Entra ID and Google document them, and answers
Dovecot's token introspection, so a tenant can sign in over XOAUTH2/OAUTHBEARER to the test
Dovecot with a token this server issued:

* any path ending in ``/token`` is the token endpoint (so ``/{tenant}/oauth2/v2.0/token``,
  Microsoft-shaped, and ``/token``, Google-shaped, both work). A form-encoded POST with
  ``grant_type`` ``client_credentials`` (Microsoft app-only), ``refresh_token`` (rotated: every use
  returns a new refresh token and invalidates the old one) or
  ``urn:ietf:params:oauth:grant-type:jwt-bearer`` (Google service account: RS256 assertion checked
  against the registered public key, its iss/aud/scope/sub/exp). Errors come back as the providers
  send them: HTTP 400/401 with ``{"error": ..., "error_description": ...}``, AADSTS codes on a
  Microsoft-shaped path, Google's wording otherwise.
* ``/introspect``: Dovecot's ``introspection_mode = post`` (form ``token=...``) answered with
  ``{"active": true, "username": <mailbox>}`` or ``{"active": false}``.
* ``idp.consent`` (tests/servers/oauth/idp_consent.py, idp_device.py): the authorize endpoint a
  browser visits, the ``authorization_code`` grant with PKCE, ID tokens, the device flow.

Tests steer it: short token lifetimes (seconds), ``revoke``, ``down``/``up`` (the listening socket
is closed and reopened on the same port, open connections are cut), ``answer_errors`` (429 with
Retry-After, or 5xx, N times), and request counters per grant type and per client.

    with IdentityProvider() as idp:
        app = idp.add_app("app-1", "s3cret", mailbox="support@contoso.example")
        url = idp.microsoft_token_url("contoso.onmicrosoft.com")

The grants themselves (Grant, the checks per grant type, OAuthError's wording, token
issuing) live in tests/servers/oauth/idp_grants.py, key helpers (RSA key pair, a Google-format
service-account JSON file) and a token-printing program for the ``command`` provider in
tests/servers/oauth/idp_keys.py, the HTTP server and handler in tests/servers/oauth/idp_http.py,
ready-made supervisor tenants per flow in tests/harness/oauth_tenants.py.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Any

from joserfc.jwk import RSAKey

from tests.servers.certs import session_certs
from tests.servers.oauth.idp_device import GRANT_TYPES as CONSENT_GRANT_TYPES
from tests.servers.oauth.idp_device import DeviceDesk
from tests.servers.oauth.idp_grants import (
    GOOGLE_SCOPE,
    JWT_BEARER,
    MICROSOFT_SCOPE,
    AccessToken,
    Grant,
    GrantHandlers,
    OAuthError,
)
from tests.servers.oauth.idp_http import IdpServer, assertion_issuer, basic_user


class IdentityProvider(GrantHandlers):
    """The stand-in server; thread-safe; start()/stop() or use it as a context manager."""

    def __init__(self, token_lifetime: float = 60, tls: bool = False, host: str = "127.0.0.1") -> None:
        self.token_lifetime = token_lifetime  # seconds; may be changed while running
        self.host = host
        self.tls = tls
        self.port = 0
        self._lock = threading.Lock()
        self._grants: list[Grant] = []
        self._by_refresh: dict[str, Grant] = {}
        self._tokens: dict[str, AccessToken] = {}
        self._error_answers: list[tuple[int, float]] = []  # (status, retry_after) still to send
        self.by_grant_type: Counter[str] = Counter()
        self.by_client: Counter[str] = Counter()
        self.introspections = 0
        self._issued: list[str] = []
        self._issued_access: list[tuple[str, str]] = []  # (access token, mailbox)
        self._server: IdpServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        # The authorize and device endpoints, the code and device grants (idp_consent.py).
        self.consent = DeviceDesk(self)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> IdentityProvider:
        self.up()
        return self

    def stop(self) -> None:
        self.down()

    def up(self) -> None:
        """Listen (again: on the same port after down())."""
        if self._server is not None:
            return
        context = None
        if self.tls:
            certs = session_certs()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certs.server_cert, certs.server_key)
        self._server = IdpServer((self.host, self.port), self, context)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"idp-{self.port}", daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Refuse connections: close the listening socket and cut every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def track_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def untrack_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> IdentityProvider:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def microsoft_token_url(self, tenant: str = "contoso.onmicrosoft.com") -> str:
        return f"{self.url}/{tenant}/oauth2/v2.0/token"

    @property
    def google_token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.url}/introspect"

    @property
    def ca_file(self) -> str:
        """The private CA that signed the TLS certificate (for token_ca_file)."""
        return str(session_certs().ca_cert)

    # ------------------------------------------------------------------ registration

    def add_app(self, client_id: str, client_secret: str, mailbox: str,
                scope: str = MICROSOFT_SCOPE) -> Grant:
        """Microsoft app-only: an app registration with a secret and FullAccess on `mailbox`."""
        return self._add(Grant("client_credentials", client_id, mailbox.lower(),
                               client_secret=client_secret, scope=scope))

    def add_refresh_grant(self, client_id: str, mailbox: str, client_secret: str | None = None,
                          rotate: bool = True) -> Grant:
        """A delegated consent: `grant.refresh_token` is the current refresh token. Microsoft
        rotates (rotate=True); Google keeps the same one (rotate=False). A grant without secret
        is a public client, as a Microsoft native app."""
        grant = Grant("refresh_token", client_id, mailbox.lower(), client_secret=client_secret,
                      rotate=rotate)
        with self._lock:
            self._issue_refresh(grant)
        return self._add(grant)

    def add_service_account(self, client_email: str, public_key_pem: bytes | str,
                            subjects: list[str], scope: str = GOOGLE_SCOPE) -> Grant:
        """A Google service account with domain-wide delegation for `subjects` (mailboxes)."""
        lowered = frozenset(s.lower() for s in subjects)
        return self._add(Grant("service_account", client_email, min(lowered, default=""),
                               public_key=RSAKey.import_key(public_key_pem), subjects=lowered,
                               scope=scope))

    def _add(self, grant: Grant) -> Grant:
        with self._lock:
            self._grants.append(grant)
        return grant

    # ------------------------------------------------------------------ steering

    def revoke(self, grant: Grant, access_tokens: bool = True) -> None:
        """Withdraw the consent/app: token requests fail, and (by default) issued tokens go
        inactive at introspection, as an admin revoking sessions would have it."""
        with self._lock:
            grant.revoked = True
            if access_tokens:
                for token in [t for t in self._tokens.values() if t.grant is grant]:
                    del self._tokens[token.value]

    def answer_errors(self, times: int, status: int = 429, retry_after: float = 1) -> None:
        """The next `times` token requests get `status` (429 with Retry-After, or a 5xx)."""
        with self._lock:
            self._error_answers.extend([(status, retry_after)] * times)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is inactive from now on."""
        with self._lock:
            self._tokens.clear()

    def issue_access_token(self, mailbox: str, lifetime: float | None = None) -> str:
        """A token for `mailbox` without an HTTP round trip (for raw-login tests)."""
        grant = Grant("direct", "direct", mailbox.lower())
        with self._lock:
            return self._issue_access(grant, lifetime).value

    def token_requests(self, client_id: str | None = None) -> int:
        """Token endpoint requests so far (all, or of one client), errors included."""
        with self._lock:
            return self.by_client[client_id] if client_id else sum(self.by_grant_type.values())

    def issued_secrets(self) -> list[str]:
        """Every access and refresh token this server ever issued (for the secrets test)."""
        with self._lock:
            return sorted(set(self._issued))

    def refresh_token_valid(self, refresh_token: str | None) -> bool:
        """Would the token endpoint accept this refresh token now (not rotated out, not revoked)?"""
        with self._lock:
            grant = self._by_refresh.get(refresh_token or "")
            return grant is not None and not grant.revoked

    def issued_access_tokens(self) -> list[tuple[str, str]]:
        """(access token, mailbox) of every access token issued (for their SASL forms)."""
        with self._lock:
            return list(self._issued_access)

    # ------------------------------------------------------------------ HTTP entry points

    def handle_token(self, path: str, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        microsoft = "/oauth2/" in path
        grant_type = form.get("grant_type", "")
        # A service account is known by its assertion's iss, whatever client_id comes along.
        client_id = (assertion_issuer(form) if grant_type == JWT_BEARER else None) \
            or form.get("client_id") or basic_user(authorization) or "?"
        with self._lock:
            self.by_grant_type[grant_type] += 1
            self.by_client[client_id] += 1
            if self._error_answers:
                status, retry_after = self._error_answers.pop(0)
                error = "temporarily_unavailable" if status == 429 else "server_error"
                return status, {"error": error, "error_description": f"HTTP {status} from the stand-in"}, \
                    {"Retry-After": f"{retry_after:g}"}
            try:
                answer = self.consent.redeem(grant_type, form) if grant_type in CONSENT_GRANT_TYPES \
                    else self._grant(path, grant_type, form, authorization)
            except OAuthError as exc:
                headers = {"WWW-Authenticate": "Basic"} if exc.status == 401 else {}
                return exc.status, exc.body(microsoft), headers
        return 200, answer, {"Cache-Control": "no-store"}

    def handle_introspection(self, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.introspections += 1
            token = self._tokens.get(form.get("token", ""))
            if token is None or token.expires_at <= time.monotonic() or token.grant.revoked:
                return {"active": False}
            return {"active": True, "username": token.mailbox,
                    "exp": int(time.time() + token.expires_at - time.monotonic())}
