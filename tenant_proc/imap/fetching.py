"""The mailbox's FETCH commands: the survey of new UIDs, bodies in bounded batches, and what a
refused or broken answer means.

A server may refuse one FETCH (NO/BAD), answer what imapclient cannot parse, or break the
connection in the middle of one. None of that may turn into an endless loop: a refusal that
names no more than one UID is that UID's failed attempt (the mailbox counts it and gives the
email up after max_attempts); a refused batch is fetched again one UID at a time to find the
one to blame; a broken connection during a batch makes the next catch-up fetch those UIDs one
at a time, so the next breakage is attributable too. An answer that names the server's state
(quota, incident, throttling; tenant_proc/errors.py) is nobody's attempt: it becomes ServerBusy,
and the whole mailbox waits.
"""
from __future__ import annotations

import imaplib
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from imapclient.response_parser import parse_fetch_response

from tenant_proc.errors import ServerBusy, names_server_state, suggested_backoff

# Bytes a header-only FETCH of an oversized email counts for in max_batch_bytes.
HEADER_ESTIMATE = 64 * 1024
BODY_ITEMS = ["BODY.PEEK[]", "INTERNALDATE", "RFC822.SIZE"]
HEADER_ITEMS = ["BODY.PEEK[HEADER]", "INTERNALDATE", "RFC822.SIZE"]


class FetchBroken(Exception):
    """The connection is unusable after a FETCH of these UIDs (BYE, EOF, timeout, an answer
    imaplib could not even read). `partial` holds what earlier commands brought; the session
    reconnects. `busy`: the server ended it with a BYE naming its own state ("* BYE System
    Error"), which is the connection's end and no email's attempt."""

    def __init__(self, uids: list[int], cause: BaseException, busy: str | None = None) -> None:
        super().__init__(f"FETCH of {_uid_list(uids)} broke the connection: {_one_line(cause)}")
        self.uids = uids
        self.partial = Fetched()
        self.busy = busy


@dataclass
class Fetched:
    messages: dict[int, dict[bytes, Any]] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # uid -> why (the email's attempt)
    busy: tuple[str, float | None] | None = None  # (why, seconds the server asked) : wait, no attempt


def connection_broken(exc: BaseException) -> bool:
    return isinstance(exc, (imaplib.IMAP4.abort, OSError, socket.timeout))


def busy_delay(text: str) -> tuple[bool, float | None]:
    """(the server said "not now", how long it asked us to wait if it said)."""
    return names_server_state(text), suggested_backoff(text)


def busy_bye(client: IMAPClient) -> str | None:
    """The text of the BYE that ended the connection, when it names the server's state.

    imaplib files an untagged BYE before it raises abort; an EOF or a garbled line leaves none,
    and those stay attributable to the email being fetched."""
    bye = client._imap.untagged_responses.get("BYE")
    text = _one_line(bye[-1]) if bye else ""
    return f"BYE {text}" if text and names_server_state(text) else None


def fetch_bodies(
    client: IMAPClient, uids: list[int], sizes: dict[int, int], limit: int, singly: bool = False
) -> Fetched:
    """Bodies with BODY.PEEK (never sets \\Seen); headers only for emails above limit."""
    result = Fetched()
    if singly:  # in UID order, so a break names the first email not handled yet
        parts = [([u], BODY_ITEMS if sizes[u] <= limit else HEADER_ITEMS) for u in uids]
    else:
        small = [u for u in uids if sizes[u] <= limit]
        large = [u for u in uids if sizes[u] > limit]
        parts = [(group, items) for group, items in ((small, BODY_ITEMS), (large, HEADER_ITEMS)) if group]
    for part, items in parts:
        try:
            _fetch_group(client, part, items, result)
        except FetchBroken as exc:
            exc.partial = result
            raise
        if result.busy is not None:
            return result
    return result


def _fetch_group(client: IMAPClient, uids: list[int], items: list[str], result: Fetched) -> None:
    try:
        result.messages.update(client.fetch(uids, items))
        return
    except Exception as exc:
        if connection_broken(exc) or not isinstance(exc, IMAPClientError):
            raise FetchBroken(uids, exc, busy_bye(client)) from None
        error = _one_line(exc)
    client._imap.untagged_responses.pop("FETCH", None)  # a refused FETCH's leftovers
    busy, asked = busy_delay(error)
    if busy:
        result.busy = (error, asked)
    elif len(uids) == 1:
        result.refused[uids[0]] = f"server refused the FETCH: {error}"[:500]
    else:  # which one? ask for each alone
        for uid in uids:
            _fetch_group(client, [uid], items, result)
            if result.busy is not None:
                return


def batches(
    uids: list[int], sizes: dict[int, int], count: int, max_bytes: int, limit: int
) -> Iterator[list[int]]:
    """Runs of at most count UIDs and (unless one email alone is larger) max_bytes bytes."""
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes[uid] if sizes[uid] <= limit else HEADER_ESTIMATE
        if batch and (len(batch) >= max(count, 1) or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        yield batch


def survey(
    client: IMAPClient, last_uid: int, prefetch: int, on_sent: Callable[[], None] | None = None
) -> tuple[dict[int, int], dict[int, dict[bytes, Any]]]:
    """Sizes of every message above last_uid, and the next UID's email if it is small.

    Two pipelined commands, one round trip:
      UID FETCH last+1:* (RFC822.SIZE)
      UID FETCH last+1 (BODY.PEEK[]<0.prefetch> INTERNALDATE RFC822.SIZE)
    New mail almost always gets UID last+1. The second command asks for at most prefetch
    bytes (<= max_message_bytes): if fewer came back, that is the whole email and needs no
    further FETCH; if not, it is dropped and the email fetched as usual (whole, or headers
    only when oversized). Returns ({uid: size}, {uid: fetch data with b"BODY[]"}).

    imapclient's fetch() cannot send a range with "*" nor pipeline, hence imaplib's command
    and response halves. "n:*" always includes the highest UID even when it is below n, and
    unsolicited FETCH responses (flag changes, keyed by sequence number) may be mixed in:
    keep only UIDs above last_uid that came with a size. Both commands' answers are parsed
    together: a server may interleave them, every line names its UID.

    The prefetch is only an optimisation: if the server refuses it, or its answer cannot be
    parsed, the sizes are asked for again alone and the body FETCH that follows meets (and
    counts) whatever is wrong with that email. A refusal naming the server's state, from either
    command, is ServerBusy (_answers).
    """
    imap = client._imap
    tags = [imap._command("UID", "FETCH", f"{last_uid + 1}:*", "(RFC822.SIZE)")]
    if prefetch > 0:
        tags.append(imap._command(
            "UID", "FETCH", str(last_uid + 1), f"(BODY.PEEK[]<0.{prefetch}> INTERNALDATE RFC822.SIZE)"
        ))
    if on_sent is not None:
        on_sent()
    answers = _answers(client, tags)
    sizes_typ, sizes_data = answers[0]
    if isinstance(sizes_typ, Exception):
        imap.untagged_responses.pop("FETCH", None)
        raise sizes_typ
    prefetch_ok = len(answers) > 1 and answers[1][0] == "OK"
    typ, data = imap._untagged_response(sizes_typ, sizes_data, "FETCH")
    client._checkok("fetch", typ, data)
    try:
        response = parse_fetch_response(data, client.normalise_times, True)
    except IMAPClientError:
        if prefetch <= 0:
            raise
        return survey(client, last_uid, 0)
    sizes = {
        uid: int(item[b"RFC822.SIZE"])
        for uid, item in response.items()
        if uid > last_uid and b"RFC822.SIZE" in item
    }
    early: dict[int, dict[bytes, Any]] = {}
    item = response.get(last_uid + 1)
    head = item.get(b"BODY[]<0>") if prefetch_ok and item is not None and last_uid + 1 in sizes else None
    # Shorter than asked: that is all of it (and the server's size agrees it is small).
    if isinstance(head, bytes) and len(head) < prefetch and sizes[last_uid + 1] < prefetch:
        early[last_uid + 1] = {b"BODY[]": head, b"INTERNALDATE": item.get(b"INTERNALDATE"),
                               b"RFC822.SIZE": sizes[last_uid + 1]}
    return sizes, early


def _answers(client: IMAPClient, tags: list[str]) -> list[tuple[Any, Any]]:
    """Each pipelined command's tagged answer; ServerBusy for the first that names the server's
    state, wherever it came. Exchange throttles one command and then closes the connection
    (`* BYE Connection closed. 14`) before it answers the next: the throttle, and the time it
    asked for, must outlive that BYE, or the tenant is back a second later."""
    answers: list[tuple[Any, Any]] = []
    try:
        for tag in tags:
            answers.append(_complete(client, tag))
    except imaplib.IMAP4.abort as exc:
        busy = _first_busy(answers) or busy_bye(client)
        if busy is not None:
            raise ServerBusy(f"server busy fetching new mail: {busy} (then: {_one_line(str(exc))})") from None
        raise
    busy = _first_busy(answers)
    if busy is not None:
        client._imap.untagged_responses.pop("FETCH", None)
        raise ServerBusy(f"server busy fetching new mail: {busy}")
    return answers


def _first_busy(answers: list[tuple[Any, Any]]) -> str | None:
    for typ, _ in answers:
        if isinstance(typ, Exception) and names_server_state(str(typ)):
            return _one_line(str(typ))
    return None


def _complete(client: IMAPClient, tag: str) -> tuple[Any, Any]:
    """One pipelined command's tagged answer; a refusal comes back as (exception, None) so the
    other command's answer is still read. A broken connection raises at once."""
    try:
        typ, data = client._imap._command_complete("FETCH", tag)
    except imaplib.IMAP4.abort:
        raise
    except IMAPClientError as exc:  # BAD
        return exc, None
    if typ != "OK":
        return IMAPClientError(f"fetch failed: {_one_line(data)}"), None
    return typ, data


def _uid_list(uids: list[int]) -> str:
    return ",".join(map(str, uids[:5])) + ("..." if len(uids) > 5 else "")


def _one_line(value: Any) -> str:
    if isinstance(value, list):
        value = b" ".join(v if isinstance(v, bytes) else str(v).encode() for v in value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = " ".join(str(value).split())
    return f"{type(value).__name__}: {text}" if isinstance(value, BaseException) else text
