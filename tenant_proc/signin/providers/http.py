"""One token request to an OAuth2 token endpoint, through authlib's httpx client.

authlib builds the form body of each grant (client_credentials, refresh_token, JWT bearer) and
the client authentication (client_secret_post, private_key_jwt); this module adds what a
tenant process needs around it: the request bounded as a whole by token_timeout (DNS, connect,
a trickling answer: tenant_proc/http_clients/deadline.py) and at most MAX_ANSWER_BYTES of the
answer read, uncompressed, the token endpoint's own trust store, the HTTP status read before
authlib parses the body (429/5xx are "try later", not a bad grant), and errors turned into one
scrubbed line. A client lives for one request: nothing stays open in a tenant that asks for a
token about once an hour.
"""
from __future__ import annotations

import logging
import ssl
import warnings
from typing import Any, Iterable
from urllib.parse import urlsplit

from tenant_proc.deps import MissingDependency, require
from tenant_proc.errors import MAX_SERVER_BACKOFF, ConnectionLost, FatalError
from tenant_proc.http_clients.deadline import answer_too_large, bound_requests
from tenant_proc.imap.tls import ssl_context
from tenant_proc.signin import errors
from tenant_proc.signin.providers.base import DEFAULT_LIFETIME, TokenResponse
from tenant_proc.spec import Secret, TenantSpec

INSTALL = "pip install 'authlib>=1.3' httpx"
MAX_ANSWER_BYTES = 64 * 1024  # a token answer is a few KB; the rest of a larger one is never read


class _QuietWhileRequesting(logging.Filter):
    """httpx logs every request at INFO ("HTTP Request: POST ..."), untagged by tenant: drop those
    of token requests (each outcome is logged by the tenant itself); other httpx users keep theirs."""

    active = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.active


_quiet = _QuietWhileRequesting()
logging.getLogger("httpx").addFilter(_quiet)


class _EncodedAnswer(Exception):
    """The endpoint compressed its answer although asked not to: 64 KB could inflate to 64 MB."""


class _EndpointBusy(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


def libraries() -> tuple[Any, Any]:
    """(authlib's httpx client module, httpx), or FatalError("config") naming the install."""
    try:
        httpx = require("httpx", "OAuth2 sign-in", INSTALL)
        with warnings.catch_warnings():
            # authlib >= 1.7 prefers the httpx2 fork and says so on import; httpx works the same.
            # authlib.deprecate installs an "always" filter when imported: import it first.
            require("authlib.deprecate", "OAuth2 sign-in", INSTALL)
            warnings.simplefilter("ignore")
            client_module = require("authlib.integrations.httpx_client", "OAuth2 sign-in", INSTALL)
    except MissingDependency as exc:
        raise FatalError("config", str(exc)) from None
    return client_module, httpx


def request_token(
    spec: TenantSpec,
    grant_type: str,
    params: dict[str, str],
    *,
    client_secret: str | None = None,
    auth_method: Any = "client_secret_post",
    client_id: str | None = None,
    secrets: Iterable[Secret | str | None] = (),
) -> TokenResponse:
    """POST one grant to spec.oauth.token_url and return the token; raises FatalError or
    ConnectionLost with a line that holds none of `secrets` (nor the answer's tokens)."""
    oauth = spec.oauth
    assert oauth is not None
    client_module, httpx = libraries()
    secrets = [*secrets, client_secret]
    host = urlsplit(oauth.token_url).netloc
    where = f"{errors.who(spec)} token endpoint {host}"
    try:
        verify: Any = ssl_context(oauth.token_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise FatalError("config", f"{where}: cannot load token_ca_file {oauth.token_ca_file}: {exc}") from None
    method_name = auth_method if isinstance(auth_method, str) else auth_method.name
    client = client_module.OAuth2Client(
        client_id=client_id, client_secret=client_secret, token_endpoint_auth_method=method_name,
        timeout=httpx.Timeout(oauth.token_timeout), verify=verify, follow_redirects=False,
        trust_env=False,  # no proxy or CA settings from the environment: token_ca_file decides
        headers={"Accept-Encoding": "identity"}, event_hooks={"response": [_uncompressed]},
    )
    bound_requests(client, oauth.token_timeout, MAX_ANSWER_BYTES)
    if not isinstance(auth_method, str):
        client.register_client_auth_method(auth_method)
    client.register_compliance_hook("access_token_response", _status_first)
    _quiet.active = True
    try:
        answer = client.fetch_token(oauth.token_url, grant_type=grant_type, **params)
    except _EndpointBusy as exc:
        raise _busy(where, exc) from None
    except client_module.OAuthError as exc:
        raise errors.oauth_error(spec, str(exc.error), exc.description, secrets) from None
    except httpx.TimeoutException:
        raise ConnectionLost(f"{where} timed out after {oauth.token_timeout:g}s") from None
    except httpx.HTTPStatusError as exc:  # a 4xx whose body is not a JSON error object
        raise FatalError("config", f"{where} answered HTTP {exc.response.status_code} without an "
                                   "OAuth error: check token_url") from None
    except httpx.TransportError as exc:
        if answer_too_large(exc):
            raise ConnectionLost(f"{where} answered more than {MAX_ANSWER_BYTES} bytes: "
                                 "not a token answer (check token_url)") from None
        if isinstance(exc.__context__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise FatalError("config", f"{where}: certificate verification failed "
                                       "(set token_ca_file for a private CA)") from None
        raise ConnectionLost(f"{where} cannot connect: {errors.scrub(str(exc), secrets)[:200]}") from None
    except _EncodedAnswer as exc:
        raise ConnectionLost(f"{where}: {exc}") from None
    except ValueError as exc:  # 2xx whose body is not a JSON object
        raise FatalError("config", f"{where}: {errors.scrub(str(exc), secrets)[:200]}") from None
    except Exception as exc:  # anything else from the libraries: one scrubbed line, retried later
        raise ConnectionLost(f"{where}: {type(exc).__name__}: "
                             f"{errors.scrub(str(exc), secrets)[:200]}") from None
    finally:
        _quiet.active = False
        client.close()
    return parse_answer(spec, dict(answer))


def parse_answer(spec: TenantSpec, answer: dict[str, Any]) -> TokenResponse:
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise FatalError("auth", f"{errors.who(spec)} sign-in failed: the token endpoint's answer "
                                 "has no access_token: check token_url and flow")
    try:
        lifetime = float(answer.get("expires_in", DEFAULT_LIFETIME))
    except (TypeError, ValueError):
        lifetime = DEFAULT_LIFETIME
    refresh = answer.get("refresh_token")
    return TokenResponse(Secret(token), max(lifetime, 0.0),
                         Secret(refresh) if isinstance(refresh, str) and refresh else None)


def _uncompressed(response: Any) -> None:
    """httpx response hook, before the body is read: only identity-encoded answers."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _EncodedAnswer(f"answered with Content-Encoding {encoding[:40]} although asked for "
                             "identity")


def _status_first(response: Any) -> Any:
    """authlib hook, before it parses the body: throttling and server errors mean "later"."""
    status = response.status_code
    if status == 429 or status >= 500:
        raise _EndpointBusy(status, _retry_after(response.headers.get("retry-after")))
    return response


def _busy(where: str, exc: _EndpointBusy) -> ConnectionLost:
    text = f"{where} unavailable: HTTP {exc.status}"
    if exc.retry_after is not None:
        # The wording the session's reconnect_delay() honours (tenant_proc.errors.suggested_backoff).
        text += f", Retry-After {exc.retry_after:g}s (Suggested Backoff Time: {int(exc.retry_after * 1000)} ms)"
    return ConnectionLost(text)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare on token endpoints: ignored)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or seconds < 0:
        return None
    return min(seconds, MAX_SERVER_BACKOFF)
