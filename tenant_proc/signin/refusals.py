"""Sign-in refusals that are the server's state, not the credentials.

Gmail refuses an account's 16th simultaneous connection (the customer's phones and laptops
count) with `NO [ALERT] Too many simultaneous connections. (Failure)` (MailKit#377); both
providers answer `[UNAVAILABLE]`, `NO Server Unavailable. 15` or a BYE during login in incidents;
Exchange answers `BAD User is authenticated but not connected.` after a good login now and then
(php-imap#464). Each of these passes by itself: the tenant waits in `backoff` with the server's
words in last_error and logs in again with the reconnect backoff, inside max_logins_per_hour.
A wrong password, `[AUTHENTICATIONFAILED]` and OAuth grant errors stay fatal (login.py).
"""
from __future__ import annotations

import imaplib
import time
from typing import Callable

from tenant_proc.errors import ConnectionLost, names_server_state

# "Authenticated but not connected" is a missing permission only when it persists: on this many
# consecutive logins, the first and the last at least this far apart (the reconnect backoff
# alone would put three logins within seven seconds).
PERSISTENT_LOGINS = 3
PERSISTENT_SPAN = 120.0


def raise_if_transient(exc: BaseException, server_text: str) -> None:
    """ConnectionLost when a refused login is the server's state, not a bad credential: a BYE or
    a dropped connection in the middle of it (imapclient wraps imaplib's abort in LoginError),
    or an answer that names the server's state (busy, throttled, over its connection limit)."""
    cause = exc.__context__ or exc.__cause__
    if isinstance(exc, imaplib.IMAP4.abort) or isinstance(cause, imaplib.IMAP4.abort):
        raise ConnectionLost(f"login interrupted: {server_text}") from None
    if names_server_state(str(exc)):
        raise ConnectionLost(f"login temporarily refused: {server_text}") from None


class NotConnectedStreak:
    """Exchange's "authenticated but not connected" on consecutive logins of one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.count = 0
        self.first = 0.0

    def refused(self) -> bool:
        """One more login answered "not connected"; True once that has persisted."""
        now = self.clock()
        if self.count == 0:
            self.first = now
        self.count += 1
        return self.count >= PERSISTENT_LOGINS and now - self.first >= PERSISTENT_SPAN

    def connected(self) -> None:
        """A login opened the mailbox: whatever came before was passing."""
        self.count = 0
