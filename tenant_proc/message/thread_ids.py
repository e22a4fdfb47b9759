"""The thread an email belongs to: In-Reply-To and References, as written and bounded.

An answering service threads its answer with these (In-Reply-To = the email's Message-ID,
References = these plus it). They are handed over as the sender wrote them (`<...>`), each cut
like Message-ID; a stranger's References of 10,000 ids is kept to MAX_REFERENCES, the first
(the thread's root) and the newest (the nearest parents), in their order.
"""
from __future__ import annotations

import re
from email.message import Message

from tenant_proc.message.headers import bounded, header_text, raw_values
from tenant_proc.message.text import clean

MAX_REFERENCES = 100
# A References field is read this far at most: ids are ~60 characters, so this holds hundreds,
# and a regex over it stays linear.
MAX_REFERENCES_CHARS = 256 * 1024
_MESSAGE_ID = re.compile(r"<[^<>]*>")


def in_reply_to(msg: Message) -> str | None:
    """The first `<...>` of In-Reply-To (old mailers add prose: "Your message of ... <id>"),
    or the field's text when it has none; None when absent or empty."""
    text = header_text(msg, "In-Reply-To")
    if not text:
        return None
    found = _MESSAGE_ID.search(text)
    return found.group() if found else text


def references(msg: Message) -> list[str]:
    values = raw_values(msg, "References")
    if not values:
        return []
    text = clean(values[0][:MAX_REFERENCES_CHARS])
    ids = ["".join(found.split()) for found in _MESSAGE_ID.findall(text)]
    if len(ids) > MAX_REFERENCES:
        ids = ids[:1] + ids[-(MAX_REFERENCES - 1):]
    return [bounded(i) for i in ids]


def list_id(msg: Message) -> str | None:
    return header_text(msg, "List-Id") or None
