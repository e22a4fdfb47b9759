"""Header fields as a person reads them, from bytes a stranger wrote; nothing here raises.

Only the fields handed over that need decoding (an encoded word or 8-bit bytes) go through the
stdlib's header registry, so they read exactly as `email.policy.default` shows them to a person
(whitespace at folds, RFC 2231 language tags, groups, 8-bit bytes inside an encoded word read in
that word's charset); plain ASCII fields keep compat32's fast path. tests/message/test_corpus.py
holds both to that. Where the two could differ on purpose: of repeated From or Subject fields
the first counts (as every parser reads them), and an address whose display name is only
whitespace is handed over without it.

Every field is bounded (MAX_RAW_HEADER_CHARS in, MAX_HEADER_CHARS out, MAX_ADDRESSES per
field): a 100 KB Message-ID is a stranger's choice, not something to carry around whole.
"""
from __future__ import annotations

import email.utils
import re
from datetime import datetime
from email.headerregistry import HeaderRegistry
from email.message import Message

from tenant_proc.message.text import clean, decode_words, readable_outside_words

# RFC 5322 lines stop at 998 characters; a real Subject or Message-ID is far below these.
MAX_RAW_HEADER_CHARS = 16 * 1024  # what is parsed at all (the registry is not linear on junk)
MAX_HEADER_CHARS = 4096  # what a handler gets per field
MAX_ADDRESSES = 500  # per address field
# The registry's address parser is quadratic on junk (16 KB of "x ": 1.2 s); longer address
# fields take compat32's getaddresses, which is linear.
MAX_STRUCTURED_CHARS = 4096
TRUNCATED_MARK = "…"

# Structured (address) and unstructured readers of the stdlib's default policy. Message-ID is
# read as unstructured text: the msg-id parser cuts `<a@b@c>` at the second "@"; we hand over
# what was written.
_STRUCTURED = HeaderRegistry()
_LINE_BREAKS = re.compile(r"[\r\n]")
_UNSTRUCTURED = HeaderRegistry(use_default_map=False)
# Address lists both parsers read the same way: `a@b.c` or `Plain Name <a@b.c>`, comma
# separated, no quotes, comments, groups or routes. Only these take compat32's getaddresses.
_ADDR = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+"
# Matched item by item (split at commas, which such a list has only between items): one regex
# over the whole list backtracked exponentially on a long hostile field.
_SIMPLE_ADDRESS = re.compile(rf"\s*(?:{_ADDR}|[A-Za-z0-9 .'-]*<{_ADDR}>)\s*")
# An address without a local part: "<@example.com>", "Support <@example.com>", "@example.com".
_NO_LOCAL_PART = re.compile(r"<\s*@|(?:^|[\s,:;])@")


def raw_values(msg: Message, name: str) -> list[str]:
    """Header values as written. raw_items() keeps 8-bit bytes as surrogate escapes (get()
    would already have replaced them), so they can still be read as UTF-8 or their charset."""
    wanted = name.lower()
    try:
        return [v if isinstance(v, str) else str(v) for k, v in msg.raw_items() if k.lower() == wanted]
    except Exception:
        return []


def header_text(msg: Message, name: str) -> str:
    """One header (the first of its name) as unfolded text (handlers want one line), as a
    person would read it."""
    values = raw_values(msg, name)
    return bounded(_unstructured(name, values[0])) if values else ""


def _unstructured(name: str, value: str) -> str:
    value = readable_outside_words(value[:MAX_RAW_HEADER_CHARS])
    if "=?" in value or not value.isascii():
        try:
            # Unfolding removes CR and LF only (RFC 5322 2.2.3): the space after a fold stays,
            # and with it the space between "TEST" and an encoded word on the next line.
            value = clean(str(_UNSTRUCTURED(name, _LINE_BREAKS.sub("", value))))
        except Exception:  # the registry's own bugs on junk (a word decoding to U+D800...)
            value = decode_words(value)
    return " ".join(value.split())


def bounded(text: str) -> str:
    return text if len(text) <= MAX_HEADER_CHARS else text[:MAX_HEADER_CHARS] + TRUNCATED_MARK


def addresses(msg: Message, name: str) -> list[str]:
    """Every address of every such field, each as "Name <addr>" and bounded."""
    return [text for text, _ in address_pairs(msg, name)]


def address_pairs(msg: Message, name: str, first_field_only: bool = False) -> list[tuple[str, str]]:
    """(as a person reads it, the bare address) for each address of the field(s)."""
    result: list[tuple[str, str]] = []
    values = raw_values(msg, name)
    for value in values[:1] if first_field_only else values:
        result.extend(_field_addresses(name, value))
        if len(result) >= MAX_ADDRESSES:
            break
    return [(bounded(text), bounded(spec)) for text, spec in result[:MAX_ADDRESSES]]


def _field_addresses(name: str, value: str) -> list[tuple[str, str]]:
    value = readable_outside_words(value[:MAX_RAW_HEADER_CHARS])
    if _NO_LOCAL_PART.search(value):
        # Every parser garbles these ("<>", or the display name taken for the local part):
        # hand the field over as written, decoded, which is what a person can still read.
        text = _unstructured(name, value)
        return [(text, "")] if text else []
    if len(value) <= MAX_STRUCTURED_CHARS and not all(
            _SIMPLE_ADDRESS.fullmatch(item) for item in value.split(",")):
        try:
            header = _STRUCTURED(name, _LINE_BREAKS.sub("", value))
            return [(_registry_address(a), clean(a.addr_spec)) for a in header.addresses
                    if a.addr_spec not in ("", "<>")]
        except Exception:  # the registry's own bugs on junk: the compat32 path below
            pass
    try:
        pairs = email.utils.getaddresses([value])
    except Exception:
        return []
    return [(_format_address(" ".join(decode_words(display).split()), clean(address)), clean(address))
            for display, address in pairs if address]


def _registry_address(address: object) -> str:
    """str() of a registry Address, whitespace runs as one space (as the subject), and no
    display name that is only whitespace (`" " <a@b>` reads `a@b`, not `  <a@b>`)."""
    if not str(getattr(address, "display_name", "") or "").strip():
        return clean(str(getattr(address, "addr_spec", "")))
    return " ".join(clean(str(address)).split())


_SPECIALS = set('()<>@,:;."[]\\')


def _format_address(display: str, address: str) -> str:
    """'Name <addr>' for people to read: unlike formataddr, never RFC 2047-encodes the name."""
    if not display:
        return address
    if _SPECIALS & set(display):
        display = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{display} <{address}>"


def header_date(msg: Message) -> datetime | None:
    value = header_text(msg, "Date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except Exception:
        return None
