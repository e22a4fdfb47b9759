"""The two ways a company process's work can fail, and the server's word on how long to wait.

Every failure below the session becomes one of two exceptions with a one-line reason (never a
secret): FatalError (a restart cannot fix it: credentials, certificate, policy) or
ConnectionLost (network, server busy: try again later), and ServerBusy, the ConnectionLost of a
server that refuses the whole mailbox for now. A vocabulary module: it imports nothing of the
project, so the IMAP, sign-in and token code can all raise them without a circle.
"""
from __future__ import annotations

import re

# Exchange/Office 365 throttling: "BAD Request is throttled. Suggested Backoff Time: 299910
# milliseconds" (also as NO, often followed by BYE). The server says how long; believe it.
THROTTLE_RE = re.compile(r"Suggested Backoff Time:\s*(\d+)", re.IGNORECASE)
MAX_SERVER_BACKOFF = 900.0  # never sleep longer than the failed-tenant backoff on its word
# Answers that name the server's state, not a credential or one email: RFC 5530's codes for
# "not now" and the free text Gmail and Exchange send instead of codes ("NO [OVERQUOTA] Account
# exceeded command or bandwidth limits.", "NO System Error (Failure)", "* BYE System Error",
# "NO Server Unavailable. 15", "Request is throttled. Suggested Backoff Time: N milliseconds",
# "NO [ALERT] Too many simultaneous connections. (Failure)"). Waiting helps; nothing else does.
SERVER_STATE_RE = re.compile(
    r"\[(?:OVERQUOTA|UNAVAILABLE|LIMIT|INUSE|THROTTLED)\]|\bSystem Error\b|\bServer Unavailable\b"
    r"|\bthrottled\b|Suggested Backoff Time|Too many simultaneous connections",
    re.IGNORECASE,
)
# A refusal naming the credentials is never the server's state, whatever else it says.
CREDENTIALS_RE = re.compile(r"\[(?:AUTHENTICATIONFAILED|AUTHORIZATIONFAILED)\]", re.IGNORECASE)


class FatalError(Exception):
    """Retrying will not help: auth or config. kind is "auth" or "config"."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class ConnectionLost(Exception):
    """The connection failed or dropped; an in-process reconnect may succeed."""


class ServerBusy(ConnectionLost):
    """The server refuses the whole mailbox for now (quota, incident, throttling): no email's
    fault, so no attempt is counted; the session drops the connection and waits what the
    server asked, else a wait that doubles up to MAX_SERVER_BACKOFF."""


def names_server_state(text: str) -> bool:
    """True when a refusal (NO, BAD or BYE text) is about the server's state, not about a
    credential or one email."""
    return SERVER_STATE_RE.search(text) is not None and CREDENTIALS_RE.search(text) is None


def suggested_backoff(text: str) -> float | None:
    """Seconds the server asked us to wait ("Suggested Backoff Time: N ms"), or None."""
    match = THROTTLE_RE.search(text)
    if match is None:
        return None
    return min(int(match.group(1)) / 1000.0, MAX_SERVER_BACKOFF)
