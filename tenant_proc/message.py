"""The parsed email handed to handlers, and a parser that never raises on hostile input.

Mail is written by strangers: malformed MIME, lying charsets and raw 8-bit headers are normal.
Every step falls back to replacement characters or skips the broken part, so one odd email
cannot stop a mailbox.
"""
from __future__ import annotations

import email
import email.policy
import email.utils
import logging
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Email:
    tenant_id: str
    folder: str
    uid: int
    uidvalidity: int
    message_id: str | None
    subject: str
    from_: str
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    date: datetime | None = None
    text: str | None = None
    html: str | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    raw: bytes = b""
    size: int = 0
    received_at: float = 0.0  # epoch, from the server's INTERNALDATE
    detected_at: float = 0.0  # epoch, when this tenant noticed the mail
    truncated: bool = False  # larger than max_message_bytes: raw holds the header only
    # A process died while handling this email, after the handler was called and before its
    # outcome was recorded: the handler may already have done its work. Make it idempotent.
    redelivered: bool = False


@dataclass(frozen=True)
class Envelope:
    """Where a raw message came from; everything parse_email cannot read from the bytes."""

    tenant_id: str
    folder: str
    uid: int
    uidvalidity: int
    size: int
    received_at: float
    detected_at: float
    truncated: bool = False
    redelivered: bool = False


def parse_email(raw: bytes, env: Envelope) -> Email:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    text, html, attachments = _walk_parts(msg, env.uid)
    return Email(
        tenant_id=env.tenant_id,
        folder=env.folder,
        uid=env.uid,
        uidvalidity=env.uidvalidity,
        message_id=_header(msg, "Message-ID") or None,
        subject=_header(msg, "Subject"),
        from_=_header(msg, "From"),
        to=_addresses(msg, "To"),
        cc=_addresses(msg, "Cc"),
        date=_date(msg),
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


def _header(msg: Message, name: str) -> str:
    """One header as text; a header the policy cannot parse falls back to its raw form."""
    try:
        value = msg.get(name)
    except Exception:  # the default policy parses lazily and can raise on garbage
        value = _raw_header(msg, name)
    if value is None:
        return ""
    return " ".join(str(value).split())  # unfold: handlers want one line


def _raw_header(msg: Message, name: str) -> str | None:
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            return value if isinstance(value, str) else str(value)
    return None


def _addresses(msg: Message, name: str) -> list[str]:
    try:
        values = [str(v) for v in msg.get_all(name, [])]
    except Exception:
        raw = _raw_header(msg, name)
        values = [raw] if raw else []
    pairs = email.utils.getaddresses(values)
    return [email.utils.formataddr(pair) if pair[0] else pair[1] for pair in pairs if pair[1]]


def _date(msg: Message) -> datetime | None:
    try:
        value = msg.get("Date")
        if value is None:
            return None
        dt = getattr(value, "datetime", None)
        return dt if dt is not None else email.utils.parsedate_to_datetime(str(value))
    except Exception:
        return None


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
            filename = part.get_filename()
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
