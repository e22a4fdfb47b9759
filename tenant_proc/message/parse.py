"""Raw bytes to the Email a handler gets: a parser that never raises on hostile input.

Mail is written by strangers: malformed MIME, lying charsets and raw 8-bit headers are normal.
Every step falls back to replacement characters or skips the broken part, so one odd email
cannot stop a mailbox. The header fields are read in headers.py; here the message is split
into its bodies and attachments.

Parsing uses the compat32 policy: the stdlib's default policy parses every header through its
header registry, which made parsing ~20x slower and was most of a tenant's CPU time per email
(bench/burst.py).
"""
from __future__ import annotations

import email
import email.policy
import logging
from email.message import Message
from typing import Any

from tenant_proc.message.headers import addresses, decode_words, header_date, header_text
from tenant_proc.message.model import Email, Envelope

# The logger keeps the name it had before the parser moved into message/: operators filter on it.
log = logging.getLogger("tenant_proc.message")


def parse_email(raw: bytes, env: Envelope) -> Email:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    text, html, attachments = _walk_parts(msg, env.uid)
    return Email(
        tenant_id=env.tenant_id,
        folder=env.folder,
        uid=env.uid,
        uidvalidity=env.uidvalidity,
        message_id=header_text(msg, "Message-ID") or None,
        subject=header_text(msg, "Subject"),
        from_=", ".join(addresses(msg, "From")) or header_text(msg, "From"),
        to=addresses(msg, "To"),
        cc=addresses(msg, "Cc"),
        date=header_date(msg),
        text=text,
        html=html,
        attachments=attachments,
        raw=raw,
        size=env.size,
        received_at=env.received_at,
        detected_at=env.detected_at,
        truncated=env.truncated,
        redelivered=env.redelivered,
    )


def _walk_parts(msg: Message, uid: int) -> tuple[str | None, str | None, list[dict[str, Any]]]:
    """The first text/plain and text/html bodies, plus a list of attachments."""
    text: str | None = None
    html: str | None = None
    attachments: list[dict[str, Any]] = []
    for part in msg.walk():
        try:
            if part.is_multipart():
                continue
            ctype = part.get_content_type()
            filename = _filename(part)
            is_attachment = filename is not None or part.get_content_disposition() == "attachment"
            if is_attachment or ctype not in ("text/plain", "text/html"):
                attachments.append(_attachment_info(part, filename, ctype))
                continue
            body = _decode_text(part)
            if ctype == "text/plain" and text is None:
                text = body
            elif ctype == "text/html" and html is None:
                html = body
        except Exception as exc:  # a broken part is skipped, the rest of the email still counts
            log.warning("uid %d: skipped an unreadable MIME part: %s: %s", uid, type(exc).__name__, exc)
    return text, html, attachments


def _filename(part: Message) -> str | None:
    """RFC 2231 (compat32 handles it) and RFC 2047 encoded words (it does not)."""
    name = part.get_filename()
    return decode_words(name) if name is not None else None


def _attachment_info(part: Message, filename: str | None, ctype: str) -> dict[str, Any]:
    payload = part.get_payload(decode=True)
    return {"name": filename, "content_type": ctype, "size": len(payload) if payload else 0}


def _decode_text(part: Message) -> str:
    """Decode with the declared charset; unknown or lying charsets give replacement chars."""
    payload = part.get_payload(decode=True)
    if payload is None:
        payload = b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know, e.g. "x-unknown"
        return payload.decode("utf-8", errors="replace")
