"""Mail for the test IMAP servers: a message to deliver, and a short IMAP session to reach them.

* `make_message()`: a valid RFC 5322 message (CRLF line ends, Date, Message-ID), what tests hand
  to Dovecot.deliver()/append() (tests/servers/imap/dovecot.py) or the other servers' helpers.
* `_ImapSession`: an imaplib login that always logs out, bounded by IMAP_TIMEOUT; plain for the
  Dovecot helpers, over TLS for Cyrus and Courier (tests/servers/imap/altserver.py ImapsSession).
* `_quote()`: a mailbox name as an IMAP quoted string; APPENDUID_RE reads APPEND's new UID.

    dc.deliver("alice", make_message("hi", extra_headers={"X-Tag": "1"}))
"""

from __future__ import annotations

import email.utils
import imaplib
import re
import ssl
from email.message import EmailMessage
from email.policy import SMTP

IMAP_TIMEOUT = 10.0        # socket timeout for the helper IMAP connections
APPENDUID_RE = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")


def make_message(
    subject: str,
    body: str = "hello",
    sender: str = "a@example.com",
    to: str = "b@example.com",
    message_id: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> bytes:
    """A valid RFC 5322 message with CRLF line ends, Date and Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain="example.com")
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes(policy=SMTP)  # policy SMTP = CRLF line ends, as on the wire


def _quote(mailbox: str) -> str:
    """IMAP quoted string; imaplib sends mailbox names verbatim."""
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _ImapSession:
    """imaplib connection that always logs out, bounded by IMAP_TIMEOUT; over TLS when given
    an ssl_context (the Cyrus and Courier helpers use it that way)."""

    def __init__(self, host: str, port: int, user: str, password: str,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.imap = (imaplib.IMAP4(host, port, timeout=IMAP_TIMEOUT) if ssl_context is None else
                     imaplib.IMAP4_SSL(host, port, ssl_context=ssl_context, timeout=IMAP_TIMEOUT))
        try:
            self.imap.login(user, password)
        except Exception:
            self.imap.shutdown()
            raise

    def __enter__(self) -> imaplib.IMAP4:
        return self.imap

    def __exit__(self, *exc: object) -> None:
        try:
            self.imap.logout()
        except (OSError, imaplib.IMAP4.error):
            self.imap.shutdown()
