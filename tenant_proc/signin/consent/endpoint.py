"""One form POST to the identity provider for a consent flow: the token endpoint (code and
device grants) or the device authorization endpoint.

The same trust as the tenant's own token requests (providers/http.py): TLS verified against
token_ca_file or the system store, no proxy or CA settings from the environment, no redirects
followed. The request as a whole ends within token_timeout (plus at most one more read), and the
answer is read up to MAX_ANSWER bytes: a hostile or broken endpoint can neither hold the command
nor fill its memory. Three outcomes: the JSON object of a 2xx answer, Refusal (an OAuth error
answer, RFC 6749 5.2 / RFC 8628 3.5: the flow decides what it means), Unavailable (429, 5xx,
timeout, no connection: the flow may ask again); anything else is a ConsentError.
"""
from __future__ import annotations

import json
import ssl
import time
from typing import Any, Iterable
from urllib.parse import urlsplit

import httpx

from tenant_proc.imap.tls import ssl_context
from tenant_proc.signin import errors
from tenant_proc.signin.consent.outcome import ConsentError, shown
from tenant_proc.spec import OAuthSpec, Secret

MAX_ANSWER = 64 * 1024  # a token answer with an ID token is a few KiB


class Refusal(Exception):
    """The endpoint answered with an OAuth error object."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description  # scrubbed already

    def describe(self) -> str:
        """`error (AADSTS… or the description's first sentence)`, fit for one line."""
        code = errors.AADSTS_RE.search(self.description)
        detail = code.group(1) if code else self.description.split(". ")[0].strip()
        return f"{shown(self.error, 60)}" + (f" ({shown(detail, 160)})" if detail else "")


class Unavailable(Exception):
    """No usable answer now (throttled, a server error, a timeout, no connection)."""


def post_form(oauth: OAuthSpec, url: str, form: dict[str, str],
              secrets: Iterable[Secret | str | None] = ()) -> dict[str, Any]:
    secrets = list(secrets)
    host = urlsplit(url).netloc
    try:
        verify: Any = ssl_context(oauth.token_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConsentError(f"cannot load token_ca_file {oauth.token_ca_file}: {exc}") from None
    timeout = oauth.token_timeout
    deadline = time.monotonic() + timeout
    body = bytearray()
    try:
        with httpx.Client(verify=verify, trust_env=False, follow_redirects=False,
                          timeout=httpx.Timeout(timeout)) as client:
            with client.stream("POST", url, data=form, headers={"Accept": "application/json"}) as response:
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER:
                        raise ConsentError(f"{host} answered more than {MAX_ANSWER // 1024} KiB: "
                                           "check the endpoint's URL")
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the whole answer took too long")
    except httpx.TimeoutException:
        raise Unavailable(f"{host} did not answer within {timeout:g}s") from None
    except httpx.TransportError as exc:
        if isinstance(exc.__context__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise ConsentError(f"{host}: certificate verification failed (set token_ca_file for a "
                               "private CA)") from None
        raise Unavailable(f"cannot reach {host}: {shown(errors.scrub(str(exc), secrets))}") from None
    except httpx.HTTPError as exc:  # a body that cannot be decoded, and the like
        raise ConsentError(f"{host}: {type(exc).__name__}: {shown(errors.scrub(str(exc), secrets))}") from None
    return _answer(host, response.status_code, bytes(body), secrets)


def _answer(host: str, status: int, body: bytes, secrets: list[Secret | str | None]) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if status == 429 or status >= 500:
        raise Unavailable(f"{host} answered HTTP {status}")
    if status >= 300:
        if isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"]:
            description = answer.get("error_description")
            text = errors.scrub(description if isinstance(description, str) else "", secrets)
            raise Refusal(status, answer["error"], text)
        raise ConsentError(f"{host} answered HTTP {status} without an OAuth error: check the "
                           "endpoint's URL")
    if not isinstance(answer, dict):
        raise ConsentError(f"{host} answered HTTP {status} without a JSON object: check the "
                           "endpoint's URL")
    return answer
