"""One way to make a supabase-py client, and one way to turn its errors into a safe line.

Used by the supervisor's tenant source and by each tenant process (store and handler). Each
process calls make_client() itself, after the fork: an HTTP connection pool shared across a
fork would interleave two processes' bytes on one socket.
"""
from __future__ import annotations

import logging

import httpx
from postgrest.exceptions import APIError
from supabase import Client, ClientOptions, create_client

from tenant_proc.http_clients.deadline import DeadlineClient

# httpx logs every request at INFO: one line per checkpoint write would bury the supervisor's own
# log, and a URL is not something to log wholesale. Failures still surface as our one-line errors.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Bounded, so a dead or black-holed Supabase costs the caller seconds, not minutes:
# connect fails fast (nothing to wait for), a slow answer gets a little longer.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0


def make_client(url: str, key: str, timeout: float = READ_TIMEOUT,
                total_timeout: float | None = None) -> Client:
    """A client with no hidden retries (callers retry on their own schedule) and bounded waits.

    total_timeout: each request ends within this many seconds as a whole, however slowly the
    server answers (tenant_proc/http_clients/deadline.py); without it only each wait is bounded."""
    # Redirects are not followed: httpx would send the apikey and Authorization headers (the
    # service-role key) on to whatever host a redirect names. A 3xx is an error that says so.
    if total_timeout is not None:
        http: httpx.Client = DeadlineClient(total_timeout, connect=min(CONNECT_TIMEOUT, timeout),
                                            follow_redirects=False)
    else:
        http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            follow_redirects=False,
        )
    options = ClientOptions(
        # supabase-py would otherwise retry GETs three times (1 + 2 + 4 s) on connect errors.
        postgrest_client_retry=False,
        # Our own httpx client: the only non-deprecated way to set the timeout in supabase-py 2.x.
        httpx_client=http,
    )
    return create_client(url, key, options)


def close_client(client: Client) -> None:
    """Close the HTTP pool we gave the client (supabase-py has no close of its own)."""
    http = getattr(client.options, "httpx_client", None)
    if http is not None:
        http.close()


def describe_error(exc: BaseException, key: str | None = None) -> str:
    """One line for a log or an exception, never containing the key.

    httpx and postgrest messages can carry the request URL or a response body; neither should
    contain the key (it travels in headers), but a proxy echoing headers or a URL pasted with a
    key in it must not leak it either, so the key is scrubbed from whatever we say.
    """
    if isinstance(exc, APIError):
        parts = [f"API error {exc.code}" if exc.code else "API error"]
        if exc.message:
            parts.append(str(exc.message))
        if exc.details and isinstance(exc.details, str) and len(exc.details) < 200:
            parts.append(f"({exc.details})")
        text = ": ".join(parts[:2]) + (" " + parts[2] if len(parts) > 2 else "")
        if str(exc.code).isdigit() and 300 <= int(exc.code) < 400:
            text += (" (a redirect: not followed, it would take the key to another address; "
                     "set SUPABASE_URL to the address that answers)")
    elif isinstance(exc, httpx.TimeoutException):
        text = f"timed out ({type(exc).__name__})"
    elif isinstance(exc, httpx.ConnectError):
        text = f"cannot connect ({_first_line(exc) or 'connection refused'})"
    elif isinstance(exc, httpx.HTTPError):
        text = f"{type(exc).__name__}: {_first_line(exc)}"
    else:
        text = f"{type(exc).__name__}: {_first_line(exc)}"
    return scrub(" ".join(text.split()), key)


def scrub(text: str, key: str | None) -> str:
    if key:
        text = text.replace(key, "***")
    return text


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
