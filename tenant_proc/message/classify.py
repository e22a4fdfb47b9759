"""Who wrote an email, as far as its headers say: the `auto` and `from_self` fields.

An answering service must never answer a robot: a reply to an out-of-office reply starts a loop
between two robots, a reply to a bounce writes to a mailer daemon. `auto` is decided by the
first of these rules that matches (header names and values case-insensitive; README, Handlers):

1. "bounce": a top-level multipart/report with report-type=delivery-status (RFC 3464), or an
   empty `Return-Path: <>` with a From whose local part is mailer-daemon or postmaster;
2. "auto_reply": Auto-Submitted: auto-replied (RFC 3834), an X-Autoreply or X-Autorespond
   header, or Precedence: auto_reply;
3. "auto_generated": Auto-Submitted with any value other than "no", or a multipart/report
   with report-type=disposition-notification (a read receipt);
4. "list": a List-Id header, or Precedence: list;
5. "bulk": Precedence: bulk or junk, or List-Unsubscribe without List-Id.
None: nothing marks the email as automatic.

Values are compared by their first token (`auto-generated (failure)` is auto-generated,
`auto-replied; owner-email=...` auto-replied). Nothing here raises: a header that cannot be
read does not match.
"""
from __future__ import annotations

import re
from email.message import Message
from typing import Iterable

# The values of `auto`, in the order their rules are tried (tenant_proc/spec.py AUTO_CLASSES
# names the same, for the config's `skip`; tests/message/test_classify.py checks they agree).
BOUNCE, AUTO_REPLY, AUTO_GENERATED, LIST, BULK = "bounce", "auto_reply", "auto_generated", "list", "bulk"
SELF = "self"  # not an `auto` value: `skip` names from_self emails with it
_DAEMONS = frozenset({"mailer-daemon", "postmaster"})
_TOKEN = re.compile(r"\s*([A-Za-z0-9_.-]+)")
_EMPTY_PATH = re.compile(r"\s*<\s*>\s*")
_WANTED = frozenset({"auto-submitted", "precedence", "x-autoreply", "x-autorespond", "list-id",
                     "list-unsubscribe", "return-path"})


def classify(msg: Message, from_address: str | None) -> str | None:
    """The `auto` class of a parsed (compat32) message; from_address: the From address part."""
    headers = _headers(msg)
    report = _report_type(msg)
    auto_submitted = _tokens(headers.get("auto-submitted", ()))
    precedence = _tokens(headers.get("precedence", ()))
    if report == "delivery-status" or (_empty_return_path(headers) and _is_daemon(from_address)):
        return BOUNCE
    if ("auto-replied" in auto_submitted or "x-autoreply" in headers or "x-autorespond" in headers
            or "auto_reply" in precedence):
        return AUTO_REPLY
    if any(token != "no" for token in auto_submitted) or report == "disposition-notification":
        return AUTO_GENERATED
    if "list-id" in headers or "list" in precedence:
        return LIST
    if precedence & {"bulk", "junk"} or "list-unsubscribe" in headers:  # List-Id: rule 4
        return BULK
    return None


def is_from_self(from_address: str | None, own_addresses: Iterable[str]) -> bool:
    """The From address (address part only, any case) is one of the mailbox's own."""
    if not from_address:
        return False
    return from_address.strip().strip("<>").lower() in {a.lower() for a in own_addresses}


def skipped_class(auto: str | None, from_self: bool, skip: Iterable[str]) -> str | None:
    """The class that keeps this email from the handler under `skip`, or None: its `auto`
    class when listed, else "self" for a from_self email when listed."""
    listed = set(skip)
    if auto is not None and auto in listed:
        return auto
    if from_self and SELF in listed:
        return SELF
    return None


def _headers(msg: Message) -> dict[str, list[str]]:
    """The headers the rules read: lower-case name -> raw values (8-bit bytes never match)."""
    found: dict[str, list[str]] = {}
    try:
        for name, value in msg.raw_items():
            key = str(name).strip().lower()
            if key in _WANTED:
                found.setdefault(key, []).append(str(value))
    except Exception:
        pass
    return found


def _tokens(values: Iterable[str]) -> set[str]:
    tokens = set()
    for value in values:
        match = _TOKEN.match(value)
        if match:
            tokens.add(match.group(1).lower())
    return tokens


def _report_type(msg: Message) -> str | None:
    """report-type of a top-level multipart/report, lower case; None for anything else."""
    try:
        if msg.get_content_type() != "multipart/report":
            return None
        value = msg.get_param("report-type")
        if isinstance(value, tuple):  # RFC 2231 (charset, language, text)
            value = value[2]
        return str(value).strip().strip('"').strip().lower() if value else None
    except Exception:
        return None


def _empty_return_path(headers: dict[str, list[str]]) -> bool:
    """The first Return-Path (the one the delivering server added on top) is `<>`."""
    values = headers.get("return-path")
    return bool(values) and _EMPTY_PATH.fullmatch(values[0]) is not None


def _is_daemon(address: str | None) -> bool:
    if not address:
        return False
    local = address.rsplit("@", 1)[0] if "@" in address else address
    return local.strip().strip("<>\"").lower() in _DAEMONS
