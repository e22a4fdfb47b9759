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
