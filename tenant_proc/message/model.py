"""The email as a handler gets it, and the envelope the mailbox knows before the bytes are read."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


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
    # What an answering service needs (issue 23): where the answer goes, the thread, and
    # whether a person wrote it at all (message/classify.py).
    reply_to: list[str] = field(default_factory=list)  # Reply-To addresses, as `to`
    in_reply_to: str | None = None  # the first <message-id> of In-Reply-To, as written
    references: list[str] = field(default_factory=list)  # References ids, in order (bounded)
    list_id: str | None = None  # the List-Id header, decoded
    auto: str | None = None  # bounce | auto_reply | auto_generated | list | bulk | None
    from_self: bool = False  # the From address is one of this mailbox's own


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
    # The mailbox's own addresses (username and the tenant's `addresses`), for from_self.
    own_addresses: tuple[str, ...] = ()


def answering_fields(email: Email) -> dict[str, Any]:
    """The six fields an answering service needs, as every shipped handler hands them on (the
    jsonl line, the webhook body and supabase_insert's columns use these names)."""
    return {
        "reply_to": list(email.reply_to),
        "in_reply_to": email.in_reply_to,
        "references": list(email.references),
        "list_id": email.list_id,
        "auto": email.auto,
        "from_self": email.from_self,
    }
