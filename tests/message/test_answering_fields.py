"""The fields an answering service needs (issue 23): reply_to, in_reply_to, references, list_id and
from_self, and the three kinds of header that once read differently from email.policy.default
(8-bit bytes inside an encoded word, repeated From/Subject fields, a display name of whitespace
only). Real-world cases of the three kinds are in the corpus (tests/message/test_corpus.py)."""
from __future__ import annotations

import email
import email.policy

from tenant_proc.message import Envelope, parse_email
from tenant_proc.message.headers import MAX_HEADER_CHARS
from tenant_proc.message.thread_ids import MAX_REFERENCES

OWN = ("support@acme.example", "help@acme.example")
ENV = Envelope("acme", "INBOX", 7, 42, 100, 1.0, 2.0, own_addresses=OWN)


def parse(*lines: bytes):
    return parse_email(b"\r\n".join(lines) + b"\r\n\r\nbody\r\n", ENV)


def reference(*lines: bytes):
    return email.message_from_bytes(b"\r\n".join(lines) + b"\r\n\r\nbody\r\n", policy=email.policy.default)


def test_absent_fields():
    mail = parse(b"From: a@b.example", b"Subject: hi")
    assert (mail.reply_to, mail.in_reply_to, mail.references, mail.list_id) == ([], None, [], None)
    assert (mail.auto, mail.from_self) == (None, False)


def test_reply_to_in_the_form_of_to():
    mail = parse(b"From: noreply@shop.example",
                 b"Reply-To: =?utf-8?q?J=C3=B6rg?= <jorg@customer.example>, other@customer.example",
                 b"To: =?utf-8?q?J=C3=B6rg?= <jorg@customer.example>")
    assert mail.reply_to == ["Jörg <jorg@customer.example>", "other@customer.example"]
    assert mail.reply_to[0] == mail.to[0]


def test_in_reply_to_as_written():
    assert parse(b"In-Reply-To: <CA+abc@mail.gmail.com>").in_reply_to == "<CA+abc@mail.gmail.com>"
    # old mailers add prose; several ids: the first
    assert parse(b"In-Reply-To: Your message of Tue, 1 Oct 2024 <x@y.example>").in_reply_to == "<x@y.example>"
    assert parse(b"In-Reply-To: <a@x> <b@x>").in_reply_to == "<a@x>"
    assert parse(b"In-Reply-To: no-brackets@x.example").in_reply_to == "no-brackets@x.example"
    assert parse(b"In-Reply-To:").in_reply_to is None
    long = parse(b"In-Reply-To: <" + b"a" * 100_000 + b"@x>").in_reply_to
    assert long is not None and len(long) <= MAX_HEADER_CHARS + 1


def test_references_in_order_and_bounded():
    mail = parse(b"References: <root@x.example>\r\n <second@x.example>\r\n\t<third@x.example>")
    assert mail.references == ["<root@x.example>", "<second@x.example>", "<third@x.example>"]
    many = b" ".join(b"<id%d@x.example>" % i for i in range(1000))
    refs = parse(b"References: " + many).references
    assert len(refs) == MAX_REFERENCES
    # the thread's root and the nearest parents, in their order
    assert refs[0] == "<id0@x.example>" and refs[1] == "<id901@x.example>" and refs[-1] == "<id999@x.example>"
    huge = parse(b"References: <" + b"r" * 50_000 + b"@x>").references
    assert len(huge) == 1 and len(huge[0]) <= MAX_HEADER_CHARS + 1


def test_list_id_decoded():
    mail = parse(b"List-Id: =?utf-8?q?Kunds=C3=A4kerhet?= <security.lists.example>")
    assert mail.list_id == "Kundsäkerhet <security.lists.example>"
    assert mail.auto == "list"


def test_from_self_against_username_and_addresses():
    assert parse(b"From: Acme Support <SUPPORT@Acme.Example>").from_self is True
    assert parse(b"From: help@acme.example").from_self is True  # an alias from `addresses`
    assert parse(b"From: Support <support@acme.example.evil>").from_self is False
    assert parse(b"From: a@b.example", b"Reply-To: support@acme.example").from_self is False
    # the From that counts is the first one
    assert parse(b"From: a@b.example", b"From: support@acme.example").from_self is False
    no_own = parse_email(b"From: support@acme.example\r\n\r\nx", Envelope("acme", "INBOX", 1, 1, 0, 0.0, 0.0))
    assert no_own.from_self is False


# ---- the three kinds of header (crafted; real ones: tests/message/corpus) ------------------------

def test_eight_bit_bytes_inside_an_encoded_word_are_read_in_its_charset():
    lines = (b"Subject: =?iso-8859-1?Q?Die_Hasen_und_die_Fr\xf6sche?=",
             b"From: =?iso-8859-1?Q?Fr\xf6sche?= <f@x.example>",
             b"To: =?utf-8?Q?J\xc3\xb6rg?= <j@x.example>")
    mail, ref = parse(*lines), reference(*lines)
    assert mail.subject == str(ref["subject"]) == "Die Hasen und die Frösche"
    assert mail.from_ == str(ref["from"]) == "Frösche <f@x.example>"
    assert mail.to == ["Jörg <j@x.example>"]
    # 8-bit bytes outside a word still read in the charset the word declares
    assert parse(b"Subject: caf\xe9 =?iso-8859-1?Q?Fr\xf6sche?=").subject == "café Frösche"


def test_of_repeated_from_and_subject_fields_the_first_counts():
    lines = (b"From: Doug <doug@example.com>", b"Subject: first", b"From: Should Be Ignored <x@y.example>",
             b"Subject: second")
    mail, ref = parse(*lines), reference(*lines)
    assert mail.from_ == str(ref["from"]) == "Doug <doug@example.com>"
    assert mail.subject == str(ref["subject"]) == "first"


def test_a_display_name_of_whitespace_only_is_dropped():
    lines = (b'From: " " <blank@x.example>', b'To: =?utf-8?q?_?= <encoded@x.example>, "\t" <tab@x.example>',
             b'Cc: "  " <two@x.example>, Real Name <real@x.example>', b'Reply-To: " " <blank@x.example>')
    mail, ref = parse(*lines), reference(*lines)
    assert [a.addr_spec for a in ref["to"].addresses] == ["encoded@x.example", "tab@x.example"]
    assert str(ref["from"]) == "  <blank@x.example>"  # what policy.default shows, empty name and all
    assert mail.from_ == "blank@x.example"
    assert mail.to == ["encoded@x.example", "tab@x.example"]
    assert mail.cc == ["two@x.example", "Real Name <real@x.example>"]
    assert mail.reply_to == ["blank@x.example"]
