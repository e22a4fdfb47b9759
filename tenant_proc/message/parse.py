"""Raw bytes to the Email a handler gets: a parser that never raises on hostile input.

Mail is written by strangers: malformed MIME, lying charsets and raw 8-bit headers are normal.
Every step falls back to replacement characters or skips the broken part, so one odd email
cannot stop a mailbox: a parse that raised failed the same way on every attempt and kept the
mailbox waiting behind it until the email was given up (issue 22). Every string handed on is
valid Unicode (message/text.py), so no handler's JSON or environment refuses it either. The
header fields are read in headers.py and thread_ids.py, the kind of sender in classify.py;
here the message is split into its bodies and attachments.

Parsing uses the compat32 policy: the stdlib's default policy parses every header through its
header registry, which made parsing ~20x slower and was most of a tenant's CPU time per email
(bench/burst.py).
"""
from __future__ import annotations

import email
import email.policy
import logging
from email.message import Message
from typing import Any, Callable, TypeVar

from tenant_proc.message import thread_ids
from tenant_proc.message.classify import classify, is_from_self
from tenant_proc.message.headers import address_pairs, addresses, header_date, header_text
from tenant_proc.message.model import Email, Envelope
from tenant_proc.message.text import clean, decode_words

# The logger keeps the name it had before the parser moved into message/: operators filter on it.
log = logging.getLogger("tenant_proc.message")
T = TypeVar("T")


def parse_email(raw: bytes, env: Envelope) -> Email:
    msg = _message(raw)
    text, html, attachments = _field(env, "bodies", lambda: _walk_parts(msg, env.uid), (None, None, []))
    author = _field(env, "From", lambda: address_pairs(msg, "From", first_field_only=True), [])
    from_address = author[0][1] if author else None
    return Email(
        tenant_id=env.tenant_id,
        folder=env.folder,
        uid=env.uid,
        uidvalidity=env.uidvalidity,
        message_id=_field(env, "Message-ID", lambda: header_text(msg, "Message-ID"), "") or None,
        subject=_field(env, "Subject", lambda: header_text(msg, "Subject"), ""),
        from_=", ".join(text for text, _ in author) or _field(env, "From", lambda: header_text(msg, "From"), ""),
        to=_field(env, "To", lambda: addresses(msg, "To"), []),
        cc=_field(env, "Cc", lambda: addresses(msg, "Cc"), []),
        date=_field(env, "Date", lambda: header_date(msg), None),
        text=text,
        html=html,
        attachments=attachments,
        raw=raw,
        size=env.size,
        received_at=env.received_at,
        detected_at=env.detected_at,
        truncated=env.truncated,
        redelivered=env.redelivered,
        reply_to=_field(env, "Reply-To", lambda: addresses(msg, "Reply-To"), []),
        in_reply_to=_field(env, "In-Reply-To", lambda: thread_ids.in_reply_to(msg), None),
        references=_field(env, "References", lambda: thread_ids.references(msg), []),
        list_id=_field(env, "List-Id", lambda: thread_ids.list_id(msg), None),
        auto=_field(env, "auto", lambda: classify(msg, from_address), None),
        from_self=is_from_self(from_address, env.own_addresses),
    )


def _message(raw: bytes) -> Message:
    try:
        return email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception as exc:  # never seen; if the stdlib ever raises, an empty email beats a stalled mailbox
        log.warning("unparsable message (%s): handed over without headers", type(exc).__name__)
        return Message()


def _field(env: Envelope, name: str, read: Callable[[], T], fallback: T) -> T:
    """One field, read so that a bug of ours or the stdlib's on junk costs that field only."""
    try:
        return read()
    except Exception as exc:
        log.warning("uid %d: %s unreadable (%s: %s): handed over empty", env.uid, name,
                    type(exc).__name__, clean(str(exc))[:200])
        return fallback


def _walk_parts(msg: Message, uid: int) -> tuple[str | None, str | None, list[dict[str, Any]]]:
    """The first text/plain and text/html bodies, plus a list of attachments."""
    text: str | None = None
    html: str | None = None
    attachments: list[dict[str, Any]] = []
    for part in msg.walk():
        try:
            if part.is_multipart():
                continue
            ctype = clean(part.get_content_type())
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
            log.warning("uid %d: skipped an unreadable MIME part: %s: %s", uid, type(exc).__name__,
                        clean(str(exc))[:200])
    return text, html, attachments


def _filename(part: Message) -> str | None:
    """RFC 2231 (compat32 handles it) and RFC 2047 encoded words (it does not)."""
    name = part.get_filename()
    return decode_words(name) if name is not None else None


def _attachment_info(part: Message, filename: str | None, ctype: str) -> dict[str, Any]:
    payload = part.get_payload(decode=True)
    return {"name": filename, "content_type": ctype, "size": len(payload) if payload else 0}


def _decode_text(part: Message) -> str:
    """Decode with the declared charset; unknown or lying charsets give replacement chars
    (and a charset such as UTF-7, whose "replace" still leaves lone surrogates, clean ones)."""
    payload = part.get_payload(decode=True)
    if payload is None:
        payload = b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return clean(payload.decode(charset, errors="replace"))
    except (LookupError, ValueError, TypeError):  # a charset Python does not know, e.g. "x-unknown"
        return payload.decode("utf-8", errors="replace")
