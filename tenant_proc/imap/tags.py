"""One tag prefix for every IMAP session, its regex compiled once in the parent.

imaplib draws a random tag prefix per connection and compiles a regex for it. In a freshly
forked tenant process that compile runs the whole `re` compiler: about a millisecond of CPU per
login and dozens of the parent's shared code pages copied into the child (its unique memory),
repeated for 1,000 tenants at start. A tag only has to differ from the other commands of its
own connection (RFC 3501 2.2.1), so every session here uses the same prefix, and this module,
imported by the parent before it forks, leaves the matching regex in `re`'s cache for all
children.
"""
from __future__ import annotations

import imaplib
import re

TAG_NUMBER = 4096 + 0x1D5  # any value in imaplib's range 4096..65535 will do


class _FixedTagNumber:
    """Stands in for the `random` module inside imaplib, which uses it for nothing else."""

    @staticmethod
    def randint(low: int, high: int) -> int:
        return TAG_NUMBER if low <= TAG_NUMBER <= high else low


def tag_regex_pattern() -> bytes:
    """The pattern imaplib's IMAP4._connect compiles (Python 3.11-3.13), for this prefix."""
    return br"(?P<tag>" + imaplib.Int2AP(TAG_NUMBER) + br"\d+) (?P<type>[A-Z]+) (?P<data>.*)"


imaplib.random = _FixedTagNumber()  # type: ignore[attr-defined]
re.compile(tag_regex_pattern(), re.ASCII)  # cached: the children find it compiled
