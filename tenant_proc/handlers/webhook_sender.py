"""Handler `tenant_proc.handlers:webhook`: POST one signed JSON document per email.

    [handler]
    target = "tenant_proc.handlers:webhook"
    url = "https://answers.example/inbound"   # a tenant's webhook_url overrides it
    secret_env = "WEBHOOK_SECRET"             # or secret = "..."
    timeout = 10                              # seconds per attempt, as a whole
    # include_raw = false, max_raw_bytes = 10485760, ca_file = "...", headers = { ... }
    # tries = 4, retry_budget = 20            # attempts and seconds within one handler call
    # allow_insecure = false                  # http:// to a host other than this machine

Headers: X-Idle-Timestamp (Unix seconds) and X-Idle-Signature "sha256=" + hex HMAC-SHA256 of
the secret over b"<timestamp>." + the exact body, so a receiver can verify and refuse replays;
Idempotency-Key "<tenant_id>:<folder>:<uidvalidity>:<uid>", stable across redeliveries.

Outcomes: 2xx handled. 408, 429, 5xx, connection errors and timeouts are retried within the call
(exponential backoff with jitter, Retry-After honoured) while retry_budget lasts, then raised so
the mailbox's retry_interval/max_attempts take over. Any other status raises
PermanentHandlerError: the email is failed at once, the status and the first bytes of the answer
in the ledger's error. The secret never appears in an exception, a log line or the body.

A receiver is not trusted to be quick or small: each attempt ends within `timeout`, and within
the tenant's request bound (HandlerContext.request_timeout, derived from heartbeat_timeout), as a
whole (a receiver trickling a byte every half second included), the tenant beats before each
attempt and while it waits for the next, and at most MAX_ANSWER_BYTES of an answer are read.
Plain http:// goes only to this machine unless allow_insecure = true: mail bodies in clear.

One client per tenant process (tenant_proc/http_clients/deadline.py), made on the first email
(after the fork), closed at close(). httpx itself is imported with this module, which the
supervisor resolves before it forks, so every tenant shares its pages.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from tenant_proc.handlers.loader import HandlerContext, PermanentHandlerError
from tenant_proc.http_clients.deadline import DeadlineClient, read_at_most
from tenant_proc.loopback import is_loopback
from tenant_proc.message import Email, answering_fields
from tenant_proc.spec import Secret, boolean

# A single POST sends no heartbeat: each attempt is also cut to the tenant's request bound
# (context.request_timeout, derived from heartbeat_timeout); the handler beats around attempts.
DEFAULT_TIMEOUT = 10.0
MAX_ANSWER_BYTES = 64 * 1024  # of an answer (status line, headers, body): the rest is never read
DEFAULT_TRIES = 4
DEFAULT_RETRY_BUDGET = 20.0  # seconds, all attempts of one handler call together
DEFAULT_MAX_RAW_BYTES = 10 * 1024 * 1024
BACKOFF_START = 0.5
BACKOFF_MAX = 8.0
ERROR_BODY_BYTES = 200  # of the receiver's answer, kept in the ledger's error
RETRY_STATUSES = frozenset({408, 429})
SLEEP_SLICE = 0.5  # keepalive at least this often while waiting for the next attempt


class WebhookError(RuntimeError):
    """A transient failure after the call's tries: the mailbox retries the email later."""


class Webhook:
    def __init__(self, options: dict[str, Any]) -> None:
        self.url = str(options.get("url") or "")
        _check_url(self.url, _flag(options, "allow_insecure"))
        self._secret = _secret(options)
        self.timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
        if not self.timeout > 0:
            raise ValueError("webhook timeout must be a number of seconds above 0")
        self.tries = max(1, int(options.get("tries", DEFAULT_TRIES)))
        self.retry_budget = max(float(options.get("retry_budget", DEFAULT_RETRY_BUDGET)), self.timeout)
        self.include_raw = _flag(options, "include_raw")
        self.max_raw_bytes = int(options.get("max_raw_bytes", DEFAULT_MAX_RAW_BYTES))
        self.ca_file = options.get("ca_file")
        self.extra_headers = _headers(options.get("headers"))
        self._client: DeadlineClient | None = None
        self._bound_reported = False

    def __repr__(self) -> str:
        return f"Webhook(url={self.url!r})"

    # -- one email ------------------------------------------------------------------------

    def __call__(self, email: Email, context: HandlerContext) -> None:
        body = orjson.dumps(webhook_document(email, context.tenant, self.include_raw,
                                             self.max_raw_bytes))
        key = f"{email.tenant_id}:{email.folder}:{email.uidvalidity}:{email.uid}"
        bound = self._attempt_bound(context)
        client = self._http(bound)
        deadline = time.monotonic() + self.retry_budget
        backoff = BACKOFF_START
        counters = context.counters
        failure = "no attempt made"
        for attempt in range(1, self.tries + 1):
            if attempt > 1:
                _count(counters, "webhook_retries")
            _count(counters, "webhook_attempts")
            context.keepalive()  # the attempt holds the heartbeat for up to `bound` seconds
            timestamp = str(int(time.time()))  # fresh per attempt: receivers refuse old ones
            wait: float | None = None
            timeout = max(min(bound, _left(deadline)), 0.1)
            try:
                status, headers, answer = self._post(client, body, key, timestamp, timeout)
            except httpx.TimeoutException as exc:
                _count(counters, "webhook_errors")
                failure = f"{type(exc).__name__}: no answer within {timeout:g}s"
            except Exception as exc:  # httpx.TransportError (connect, protocol) and kin
                _count(counters, "webhook_errors")
                failure = f"{type(exc).__name__}: {self._scrub(str(exc))}"[:300]
            else:
                _count(counters, f"webhook_{status // 100}xx" if 200 <= status < 600 else "webhook_errors")
                if 200 <= status < 300:
                    return
                failure = f"HTTP {status}: {self._scrub(_snippet(answer))}"
                if status not in RETRY_STATUSES and status < 500:
                    raise PermanentHandlerError(f"webhook answered {failure}")
                wait = _retry_after(headers.get("retry-after"))
            if attempt == self.tries:
                break
            pause = wait if wait is not None else backoff * random.uniform(0.8, 1.2)
            backoff = min(backoff * 2, BACKOFF_MAX)
            if pause >= _left(deadline):  # no time left in this call: the mailbox retries later
                break
            _sleep(pause, context)
        raise WebhookError(f"webhook failed after {attempt} attempt(s): {failure}")

    def _attempt_bound(self, context: HandlerContext) -> float:
        bound = min(self.timeout, context.request_timeout)
        if bound < self.timeout and not self._bound_reported:
            self._bound_reported = True
            context.logger.warning(
                "webhook timeout %gs is above the request bound %gs (derived from heartbeat_timeout): "
                "each attempt ends within %gs", self.timeout, bound, bound)
        return bound

    def _post(self, client: DeadlineClient, body: bytes, key: str, timestamp: str,
              timeout: float) -> tuple[int, httpx.Headers, bytes]:
        """One attempt, ended within timeout as a whole: (status, headers, the answer's first
        bytes). A 64 MB or trickling answer costs its first MAX_ANSWER_BYTES, or the time left."""
        signature = hmac.new(self._secret.reveal().encode(), timestamp.encode() + b"." + body,
                             hashlib.sha256).hexdigest()
        headers = {**self.extra_headers, "Content-Type": "application/json",
                   "X-Idle-Timestamp": timestamp, "X-Idle-Signature": f"sha256={signature}",
                   "Idempotency-Key": key}
        request = client.build_request("POST", self.url, content=body, headers=headers, timeout=timeout)
        response = client.send(request, stream=True)
        try:
            try:
                answer = read_at_most(response, MAX_ANSWER_BYTES)
            except httpx.HTTPError:  # the status decides; a body too slow to read is dropped
                answer = b""
            return response.status_code, response.headers, answer
        finally:
            response.close()

    def _http(self, bound: float) -> DeadlineClient:
        """The process's client; no request it makes outlasts bound seconds."""
        if self._client is None:
            verify: Any = True
            if self.ca_file:
                import ssl

                verify = ssl.create_default_context(cafile=str(self.ca_file))
            # HTTP/1.1 keep-alive (httpx's default pool); redirects not followed: a 3xx is a
            # permanent misconfiguration, reported instead of re-POSTing the email elsewhere.
            # Identity encoding: what is read is what was sent, never a body that inflates.
            self._client = DeadlineClient(
                bound, connect=bound, max_answer_bytes=MAX_ANSWER_BYTES, verify=verify,
                follow_redirects=False,
                headers={"User-Agent": "idle-supervisor", "Accept-Encoding": "identity"})
        return self._client

    def _scrub(self, text: str) -> str:
        secret = self._secret.reveal()
        return text.replace(secret, "***") if secret else text

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def webhook_document(email: Email, tenant: dict[str, Any], include_raw: bool,
                     max_raw_bytes: int) -> dict[str, Any]:
    """The JSON body for one email (field names are part of the interface)."""
    document: dict[str, Any] = {
        "tenant_id": email.tenant_id,
        "tenant_name": tenant.get("name", email.tenant_id),
        "folder": email.folder,
        "uidvalidity": email.uidvalidity,
        "uid": email.uid,
        "message_id": email.message_id,
        "subject": email.subject,
        "from": email.from_,
        "to": email.to,
        "cc": email.cc,
        "date": email.date.isoformat() if email.date else None,
        "received_at": email.received_at,
        "detected_at": email.detected_at,
        "text": email.text,
        "html": email.html,
        "attachments": [{"name": a.get("name"), "content_type": a.get("content_type"),
                         "size": a.get("size")} for a in email.attachments],
        "size": email.size,
        "truncated": email.truncated,
        "redelivered": email.redelivered,
        **answering_fields(email),
    }
    if include_raw:
        fits = len(email.raw) <= max_raw_bytes
        document["raw"] = base64.b64encode(email.raw).decode("ascii") if fits else None
        document["raw_omitted"] = None if fits else f"larger than max_raw_bytes ({max_raw_bytes})"
    return document


def _secret(options: dict[str, Any]) -> Secret:
    if "secret_env" in options:
        name = str(options["secret_env"])
        value = os.environ.get(name, "")
        if not value:
            raise ValueError(f"webhook secret environment variable {name} is not set")
        return Secret(value)
    value = options.get("secret")
    if isinstance(value, Secret) and value:
        return value
    if isinstance(value, str) and value:
        return Secret(value)
    raise ValueError("webhook needs secret_env = \"NAME\" (or secret = \"...\")")


def _check_url(url: str, allow_insecure: bool) -> None:
    """http(s) only; plain http only to this machine unless allowed (as plain IMAP is)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("webhook needs url = \"https://...\" (or a tenant webhook_url)")
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure:
        raise ValueError(f"refusing plain http to {parts.hostname}: mail would cross the network "
                         "in clear; use https, or set allow_insecure = true in [handler]")


def _flag(options: dict[str, Any], name: str) -> bool:
    """A true/false option: a TOML boolean, or its text from an IDLE_SUPERVISOR_HANDLER_* variable."""
    value = boolean(options.get(name, False))
    if value is None:
        raise ValueError(f"webhook {name} must be true or false")
    return value


def _headers(value: Any) -> dict[str, str]:
    """headers = { ... }: a table in TOML, frozen into sorted pairs by the config loader."""
    if value is None:
        return {}
    pairs = value.items() if isinstance(value, dict) else value
    try:
        return {str(k): str(v) for k, v in pairs}
    except (TypeError, ValueError):
        raise ValueError("webhook headers must be a table of strings") from None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def _snippet(content: bytes) -> str:
    text = content[:ERROR_BODY_BYTES].decode("utf-8", "replace")
    return " ".join(text.split()) or "(empty body)"


def _sleep(seconds: float, context: HandlerContext) -> None:
    """Wait for the next attempt, heartbeating meanwhile so the tenant is not killed as hung."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        context.keepalive()
        time.sleep(min(left, SLEEP_SLICE))


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def _count(counters: dict[str, int], name: str) -> None:
    counters[name] = counters.get(name, 0) + 1


# The name the config uses: `tenant_proc.handlers:webhook` (re-exported lazily there).
webhook = Webhook
