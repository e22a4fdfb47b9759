"""The two ways a company process's work can fail, and the server's word on how long to wait.

Every failure below the session becomes one of two exceptions with a one-line reason (never a
secret): FatalError (a restart cannot fix it: credentials, certificate, policy) or
ConnectionLost (network, server busy: try again later). A vocabulary module: it imports nothing
of the project, so the IMAP, sign-in and token code can all raise them without a circle.
"""
from __future__ import annotations

import re

# Exchange/Office 365 throttling: "BAD Request is throttled. Suggested Backoff Time: 299910
# milliseconds" (also as NO, often followed by BYE). The server says how long; believe it.
THROTTLE_RE = re.compile(r"Suggested Backoff Time:\s*(\d+)", re.IGNORECASE)
MAX_SERVER_BACKOFF = 900.0  # never sleep longer than the failed-tenant backoff on its word


class FatalError(Exception):
    """Retrying will not help: auth or config. kind is "auth" or "config"."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class ConnectionLost(Exception):
    """The connection failed or dropped; an in-process reconnect may succeed."""


def suggested_backoff(text: str) -> float | None:
    """Seconds the server asked us to wait ("Suggested Backoff Time: N ms"), or None."""
    match = THROTTLE_RE.search(text)
    if match is None:
        return None
    return min(int(match.group(1)) / 1000.0, MAX_SERVER_BACKOFF)
