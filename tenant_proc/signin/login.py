"""The tenant's login step: a password (LOGIN, or AUTHENTICATE PLAIN for non-ASCII) or an OAuth2
access token over SASL XOAUTH2 / OAUTHBEARER (RFC 7628).

The session calls login() at every (re)connect, and `check` once. The token source of
each tenant lives for the whole process (tokens.py), so a reconnect after Google ended the
session at token expiry logs in with a refreshed token, in-process. The OAuth libraries are
imported only here and in providers/, lazily; preload() imports them in the supervisor before it
forks, only when some tenant uses OAuth, so password-only deployments pay nothing.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable, Iterable

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from tenant_proc.errors import ConnectionLost, FatalError
from tenant_proc.signin import errors
from tenant_proc.signin.refusals import raise_if_transient
from tenant_proc.spec import TenantSpec

MECHANISMS = {"xoauth2": "XOAUTH2", "oauthbearer": "OAUTHBEARER"}

_sources: dict[str, object] = {}  # tenant id -> TokenSource, for this process
_keepalive: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class SignIn:
    """What the login step did (for `check`); never holds a secret."""

    method: str  # LOGIN | PLAIN | XOAUTH2 | OAUTHBEARER
    token_lifetime: float | None = None  # seconds left on the token used, OAuth only


def configure_process(keepalive: Callable[[], None]) -> None:
    """Tenant process: called with control.heartbeat_if_due, which token requests call around
    their bounded wait so a slow token endpoint never gets a healthy tenant killed as hung."""
    global _keepalive
    _keepalive = keepalive


def preload(specs: Iterable[TenantSpec]) -> None:
    """Supervisor side, before forking: import the OAuth libraries once (shared pages) and build
    the token endpoints' TLS contexts, only when a tenant about to start uses OAuth."""
    oauth = [spec for spec in specs if spec.auth != "password" and spec.oauth is not None]
    if not oauth:
        return
    from tenant_proc.imap.tls import ssl_context
    from tenant_proc.signin.providers import http

    try:
        http.libraries()
        import authlib.oauth2.rfc7523  # noqa: F401  (JWT signing: Google, certificates)
        import cryptography.x509  # noqa: F401
    except (FatalError, ImportError):
        return  # each tenant reports the missing library itself, as one config line
    from tenant_proc.signin import tokens  # noqa: F401
    for spec in oauth:
        try:
            ssl_context(spec.oauth.token_ca_file if spec.oauth else None)
        except (OSError, ValueError):
            pass  # the tenant reports it


def token_source(spec: TenantSpec):  # -> tokens.TokenSource
    """This process's token source for the tenant (a changed spec gets a new one)."""
    from tenant_proc.signin.tokens import TokenSource

    source = _sources.get(spec.id)
    if source is None or source.spec != spec:  # type: ignore[attr-defined]
        source = _sources[spec.id] = TokenSource(spec, keepalive=lambda: _keepalive())
    return source


def login(client: IMAPClient, spec: TenantSpec) -> SignIn:
    if spec.auth == "password":
        return password_login(client, spec)
    return oauth_login(client, spec)


# -- passwords ------------------------------------------------------------------------------

def password_login(client: IMAPClient, spec: TenantSpec) -> SignIn:
    """LOGIN is ASCII-only (imaplib refuses anything else): a non-ASCII username or password goes
    over AUTHENTICATE PLAIN, which is UTF-8 (RFC 4616), when the server offers it."""
    username, password = spec.username, spec.password.reveal()
    use_plain = not (username.isascii() and password.isascii())
    if use_plain and not _offers(client, "AUTH=PLAIN"):
        raise FatalError("auth", f"login for {spec.username} at {spec.host}:{spec.port} impossible: "
                                 "the password or username has non-ASCII characters and the server "
                                 "offers no AUTHENTICATE PLAIN (UTF-8): use an ASCII password")
    try:
        if use_plain:
            client.plain_login(username, password)
        else:
            client.login(username, password)
    except LoginError as exc:
        _raise_if_transient(client, exc)
        errors.raise_if_mailbox_refused(spec, exc)  # Exchange: the password is fine, see refusals.py
        raise FatalError("auth", f"login failed for {spec.username} at {spec.host}:{spec.port}: "
                                 f"{_server_text(exc)}") from None
    return SignIn("PLAIN" if use_plain else "LOGIN")


# -- OAuth ------------------------------------------------------------------------------------

def oauth_login(client: IMAPClient, spec: TenantSpec) -> SignIn:
    mechanism = MECHANISMS[spec.auth]
    if not _offers(client, f"AUTH={mechanism}"):
        raise FatalError("config", f"{errors.who(spec)}: {spec.host}:{spec.port} does not offer "
                                   f"AUTHENTICATE {mechanism}: try auth = "
                                   f"\"{'oauthbearer' if spec.auth == 'xoauth2' else 'xoauth2'}\"")
    source = token_source(spec)
    token = source.for_login()
    try:
        _authenticate(client, spec, mechanism, token)
    except LoginError as refused:
        _raise_if_transient(client, refused)
        errors.raise_if_mailbox_refused(spec, refused)  # a new token would not help either
        token = source.refetch()  # the server refused a token that looked valid: once more
        if token is None:
            raise errors.token_refused(spec, _server_text(refused)) from None
        try:
            _authenticate(client, spec, mechanism, token)
        except LoginError as again:
            _raise_if_transient(client, again)
            raise errors.token_refused(spec, _server_text(again)) from None
    return SignIn(mechanism, max(0.0, token.left(source.clock())))


def _authenticate(client: IMAPClient, spec: TenantSpec, mechanism: str, token) -> None:
    """One AUTHENTICATE exchange; the SASL strings exist only inside the callback."""
    exchange = _SaslExchange(spec.username, mechanism, token.value)
    try:
        client.sasl_login(mechanism, exchange)
    except LoginError:
        raise
    except IMAPClientError as exc:  # BYE or a broken answer mid-exchange
        raise ConnectionLost(f"AUTHENTICATE {mechanism} interrupted: {_server_text(exc)}") from None


class _SaslExchange:
    """The client side of XOAUTH2 / OAUTHBEARER: the initial response, then - if the server
    answers with an error challenge (a JSON status) - the dummy response that lets it say NO."""

    def __init__(self, username: str, mechanism: str, token) -> None:
        self._username = username
        self._mechanism = mechanism
        self._token = token  # a Secret
        self._step = 0

    def __repr__(self) -> str:
        return f"_SaslExchange({self._mechanism})"

    def __call__(self, challenge: bytes) -> bytes:
        self._step += 1
        if self._step > 1:
            # RFC 7628 3.2.3: %x01 ends a failed OAUTHBEARER; Google: an empty XOAUTH2 response.
            return b"\x01" if self._mechanism == "OAUTHBEARER" else b""
        bearer = f"auth=Bearer {self._token.reveal()}\x01\x01"
        if self._mechanism == "OAUTHBEARER":
            user = self._username.replace("=", "=3D").replace(",", "=2C")
            return f"n,a={user},\x01{bearer}".encode()
        return f"user={self._username}\x01{bearer}".encode()


# -- helpers ----------------------------------------------------------------------------------

def _offers(client: IMAPClient, capability: str) -> bool:
    try:
        return bool(client.has_capability(capability))
    except IMAPClientError as exc:
        raise ConnectionLost(f"CAPABILITY failed: {_server_text(exc)}") from None


def _raise_if_transient(client: IMAPClient, exc: LoginError) -> None:
    """The auth backend is down, the server throttles us or is over its connection limit, the
    login was cut short: not a bad credential, retry later (refusals.py). A BYE in the middle
    of AUTHENTICATE surfaces as the EOF after it: its own words are in the untagged answers."""
    imap = getattr(client, "_imap", None)
    bye = imap.untagged_responses.get("BYE") if imap is not None else None
    words = " ".join(bye[-1].decode("utf-8", "replace").split())[:200] if bye else ""
    raise_if_transient(exc, f"BYE {words}" if words else _server_text(exc))


def _server_text(exc: BaseException) -> str:
    """What the server said, as text: imaplib puts the server's bytes into its errors, so
    str(exc) reads `b'[AUTHENTICATIONFAILED] ...'`; an operator should see the words only."""
    text = str(exc)
    if len(text) >= 3 and text[0] == "b" and text[1] in "'\"" and text[-1] == text[1]:
        try:
            raw = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raw = None
        if isinstance(raw, bytes):
            text = raw.decode("utf-8", "replace")
    return " ".join(text.split())[:200]
