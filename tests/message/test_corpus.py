"""Real-world mail (tests/message/corpus/, sources in SOURCES.md): our fast compat32 parse gives every
header field a person sees exactly as the stdlib's standards-following `email.policy.default`
shows it, and nothing raises.

Normalised the same way on both sides: whitespace runs to one space. Two deliberate differences,
where policy.default shows something worse and we hand over more:
- 8-bit bytes that are not UTF-8 come out in the charset an encoded word beside them declares,
  where policy.default shows U+FFFD: a U+FFFD on its side matches any one character on ours;
- an address without a local part (`<@example.com>`): policy.default shows `<>`, we the field as
  written (such fields are compared as text).
Message-ID is compared with policy.default's unstructured reading: its msg-id parser cuts
`<a@b@c>` at the second "@" (the stdlib's own `email.policy.default` with a registry that reads
every field as unstructured, which is also how it reads any header it has no parser for).

Issue 23's three kinds, each with real-world cases here (SOURCES.md): 8-bit bytes inside an
encoded word read in the word's charset (policy.default's reading); of repeated From or
Subject fields the first counts (`msg["from"]`, as policy.default reads them); an address whose
display name is only whitespace is its addr_spec (policy.default shows `'  <a@b>'`; the empty
name is dropped).
"""
from __future__ import annotations

import email
import email.policy
import re
from email.headerregistry import HeaderRegistry
from pathlib import Path

import pytest

from tenant_proc.message import Envelope, parse_email

CORPUS = Path(__file__).parent / "corpus"
MESSAGES = sorted(CORPUS.rglob("*.eml"))
ENV = Envelope("acme", "INBOX", 1, 1, 0, 0.0, 0.0)
UNSTRUCTURED = email.policy.default.clone(header_factory=HeaderRegistry(use_default_map=False))
NO_LOCAL_PART = re.compile(r"<\s*@|(?:^|[\s,:;])@")


def norm(text: object) -> str:
    value = " ".join(str(text).split())
    # The registry leaves undecodable bytes as surrogates in display names: read them as
    # policy.default's own str() of the field does (UTF-8, else U+FFFD).
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def same(reference: str, ours: str) -> bool:
    if "\ufffd" not in reference:
        return reference == ours
    pattern = ".".join(re.escape(part) for part in reference.split("\ufffd"))
    return re.fullmatch(pattern, ours, re.S) is not None


def reference_addresses(msg: email.message.Message, plain: email.message.Message, name: str) -> list[str]:
    result: list[str] = []
    fields = list(zip(msg.get_all(name) or [], plain.get_all(name) or []))
    for header, text in fields[:1] if name == "from" else fields:
        if NO_LOCAL_PART.search(str(text)):
            result.append(norm(text))
        else:
            result.extend(norm(a if a.display_name.strip() else a.addr_spec)
                          for a in header.addresses if a.addr_spec not in ("", "<>"))
    return result


def test_corpus_is_there_and_small() -> None:
    assert len(MESSAGES) >= 100
    assert sum(p.stat().st_size for p in MESSAGES) < 2_000_000
    listed = (CORPUS / "SOURCES.md").read_text()
    assert all(f"`{p.relative_to(CORPUS)}`" in listed for p in MESSAGES)


@pytest.mark.parametrize("path", MESSAGES, ids=[str(p.relative_to(CORPUS)) for p in MESSAGES])
def test_fields_read_as_policy_default_shows_them(path: Path) -> None:
    raw = path.read_bytes()
    ours = parse_email(raw, ENV)  # must not raise
    ref = email.message_from_bytes(raw, policy=email.policy.default)
    plain = email.message_from_bytes(raw, policy=UNSTRUCTURED)
    subject = norm(ref["subject"]) if ref["subject"] is not None else ""
    assert same(subject, ours.subject), (subject, ours.subject)
    message_id = norm(plain["message-id"]) if plain["message-id"] is not None else None
    assert message_id == ours.message_id or (message_id and same(message_id, ours.message_id or ""))
    for name, got in (("from", ours.from_), ("to", ours.to), ("cc", ours.cc)):
        want = reference_addresses(ref, plain, name)
        got_list = got if isinstance(got, list) else ([got] if got else [])
        if name == "from" and not want:  # no parsable From: we hand over the raw text, if any
            continue
        if name == "from":
            got_list = [", ".join(got_list)]
            want = [", ".join(want)]
        assert len(want) == len(got_list) and all(map(same, want, got_list)), (name, want, got_list)
