"""What the server lists (UID SEARCH), to hold against what its FETCH returned.

Exchange announces a new UID and lists it in `UID SEARCH`, while `UID FETCH n:*` leaves it out
for minutes, and some items for good. A survey of sizes alone cannot tell such a UID from a gap
left by an expunge, so every catch-up pipelines `UID SEARCH UID last+1:*` in front of the
survey: same round trip, and since the server runs it first, a UID arriving in between shows up
in the FETCH only. Only if such late arrivals leave a gap (a UID above everything the search
listed that the FETCH skipped) does a second search, after the FETCH, say whether the gap is a
UID the server holds back or one that never was (MissingUids.noticed).
"""
from __future__ import annotations

from typing import Any, Iterable

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError


def send_uid_search(client: IMAPClient, uid_set: str) -> str:
    """Send `UID SEARCH UID <uid_set>` without waiting; returns its tag for read_uid_search."""
    return client._imap._command("UID", "SEARCH", "UID", uid_set)


def read_uid_search(client: IMAPClient, tag: str) -> set[int]:
    """The UIDs the pipelined search listed. A refusal raises IMAPClientError with the server's
    words (as a refused survey does); a broken connection raises imaplib's abort."""
    imap = client._imap
    try:
        typ, data = imap._command_complete("SEARCH", tag)
    except IMAPClientError:
        imap.untagged_responses.pop("SEARCH", None)
        raise
    if typ != "OK":
        imap.untagged_responses.pop("SEARCH", None)
        raise IMAPClientError(f"UID SEARCH refused: {_text(data)}")
    _, lines = imap._untagged_response(typ, data, "SEARCH")
    return _uids(lines)


def discard_uid_search(client: IMAPClient, tag: str) -> None:
    """The survey failed before the search was read: drop what it left, so a later search does
    not read this one's answer as its own. Never raises (the connection may be gone)."""
    imap = client._imap
    imap.untagged_responses.pop("SEARCH", None)
    if imap.tagged_commands.get(tag) is not None:
        imap.tagged_commands.pop(tag, None)


def listed(client: IMAPClient, uids: Iterable[int]) -> set[int]:
    """Which of these UIDs the server still lists (one `UID SEARCH UID a,b,c`)."""
    wanted = sorted(set(uids))
    if not wanted:
        return set()
    return set(client.search(["UID", ",".join(map(str, wanted))])) & set(wanted)


def listed_between(client: IMAPClient, low: int, high: int) -> set[int]:
    """The UIDs the server lists from low to high (one `UID SEARCH UID low:high`)."""
    return {uid for uid in client.search(["UID", f"{low}:{high}"]) if low <= uid <= high}


def _uids(lines: list[Any]) -> set[int]:
    found: set[int] = set()
    for line in lines:
        if isinstance(line, bytes):
            found.update(int(word) for word in line.split() if word.isdigit())
    return found


def _text(data: Any) -> str:
    if isinstance(data, list):
        data = b" ".join(d if isinstance(d, bytes) else str(d).encode() for d in data)
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return " ".join(str(data).split())[:200]
