"""Text a stranger's bytes become: always valid Unicode, never an exception.

Three sources of trouble meet here. A bytes parse keeps raw 8-bit header bytes as surrogate
escapes (U+DC80..U+DCFF); charsets such as UTF-7 decode to lone surrogates (`+2AA-` is U+D800)
even with errors="replace"; and a charset name can be one Python does not know. Text that
still holds a surrogate cannot be encoded as UTF-8, so orjson, PostgREST, a log line or a
process environment would refuse it on every attempt and stall the mailbox behind it. Every
string handed on passes clean() first: escaped bytes are read (UTF-8 when they are UTF-8, else
the charset the header declares), anything else that cannot be encoded becomes U+FFFD.
"""
from __future__ import annotations

import email.header
import re

# A run of surrogate-escaped bytes (what a bytes parse makes of 8-bit header bytes).
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# An RFC 2047 encoded word, its charset (an RFC 2231 language tag after "*" left out).
ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?[bBqQ]\?[^?\s]*\?=")
_WORD_CHARSET = re.compile(r"=\?([^?*\s]+)(?:\*[^?]*)?\?[bBqQ]\?")


def clean(text: str, charset: str | None = None) -> str:
    """text as valid Unicode: escaped bytes read as UTF-8 if they are UTF-8, else in charset,
    else as replacement characters; any other lone surrogate becomes U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    text = _ESCAPED_BYTES.sub(lambda run: _decode_bytes(_unescape(run.group()), charset), text)
    return _SURROGATE.sub("\ufffd", text)


def _unescape(run: str) -> bytes:
    return bytes(ord(c) - 0xDC00 for c in run)


def _decode_bytes(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if charset:
        try:
            return raw.decode(charset, "replace")  # may hold lone surrogates: clean() ends with them
        except (LookupError, ValueError, TypeError):
            pass
    return raw.decode("utf-8", "replace")


def declared_charset(value: str) -> str | None:
    """The charset the first encoded word of a header declares: the best guess for raw 8-bit
    bytes beside it (the sender's mailer wrote both)."""
    found = _WORD_CHARSET.search(value)
    return found.group(1) if found else None


def readable_outside_words(value: str) -> str:
    """8-bit bytes outside encoded words as characters (UTF-8, else the declared charset);
    bytes *inside* an encoded word stay escaped, for the header registry to decode in the
    word's own charset, as email.policy.default does (`=?iso-8859-1?Q?Fr\\xf6sche?=`)."""
    if value.isascii():
        return value
    charset = declared_charset(value)
    parts: list[str] = []
    position = 0
    for word in ENCODED_WORD.finditer(value):
        parts.append(clean(value[position:word.start()], charset))
        parts.append(word.group())
        position = word.end()
    parts.append(clean(value[position:], charset))
    return "".join(parts)


def decode_words(value: str) -> str:
    """RFC 2047 encoded words (=?utf-8?q?...?=) to text, with the stdlib's older decoder (the
    fallback when the header registry gives up); never raises."""
    charset = declared_charset(value)
    if "=?" not in value:
        return clean(value, charset)
    try:
        parts = []
        for chunk, chunk_charset in email.header.decode_header(value):
            if isinstance(chunk, bytes):
                try:
                    chunk = chunk.decode(chunk_charset or "ascii", "replace")
                except (LookupError, ValueError, TypeError):  # a charset Python does not know
                    chunk = chunk.decode("utf-8", "replace")
            parts.append(clean(chunk, charset))
        return clean("".join(parts), charset)
    except Exception:  # malformed encoded words: keep them as written
        return clean(value, charset)
