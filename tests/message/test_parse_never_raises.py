"""Parsing never raises, whatever the bytes (issue 22 item 1), and every field it hands on is text
every handler can carry: valid UTF-8 for JSON (webhook, jsonl, supabase_insert) and for a
process environment (command).

The reproducer: `Subject: \\xff+2AA-=?utf-7?b?x?=` (8-bit bytes beside an encoded word in a
charset that yields a lone surrogate) made the header reader produce U+D800 and its fallback
raise UnicodeEncodeError; the email failed the same way on every attempt, the mailbox waited
behind it for max_attempts x retry_interval and the email ended `failed`. The property tests
build headers from 8-bit bytes, charsets (UTF-7 among them) and encoded words (valid, broken,
with raw bytes inside), in every field the parser reads.
"""
from __future__ import annotations

import base64
import os
from dataclasses import fields

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tenant_proc.handlers.basic import _jsonl_record
from tenant_proc.handlers.command_runner import command_env
from tenant_proc.handlers.supabase import email_row
from tenant_proc.handlers.webhook_sender import webhook_document
from tenant_proc.message import Email, Envelope, parse_email

ENV = Envelope("acme", "INBOX", 7, 42, 100, 1.0, 2.0)
REPRODUCER = b"\xff+2AA-=?utf-7?b?x?="


def assert_carryable(mail: Email) -> None:
    """Every string of the email is valid UTF-8, and each shipped handler's document of it
    serialises (orjson refuses lone surrogates, the kernel NUL in an environment value)."""
    for f in fields(mail):
        _valid(getattr(mail, f.name), f.name)
    orjson.dumps(webhook_document(mail, {"name": "Acme"}, include_raw=True, max_raw_bytes=1 << 20))
    orjson.dumps(_jsonl_record(mail))
    orjson.dumps(email_row(mail))
    env = command_env(mail, {}, {"PATH": os.defpath})
    assert all("\x00" not in v for v in env.values())
    for value in env.values():
        value.encode("utf-8")


def _valid(value: object, where: str) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # raises on a lone surrogate
    elif isinstance(value, (list, tuple)):
        for item in value:
            _valid(item, where)
    elif isinstance(value, dict):
        for item in value.values():
            _valid(item, where)


def test_the_reproducer_in_every_header_field():
    for name in (b"Subject", b"Message-ID", b"From", b"To", b"Cc", b"Reply-To", b"In-Reply-To",
                 b"References", b"List-Id", b"Date", b"Auto-Submitted", b"Content-Type"):
        mail = parse_email(name + b": " + REPRODUCER + b"\r\n\r\nbody\r\n", ENV)
        assert_carryable(mail)
    mail = parse_email(b"Subject: " + REPRODUCER + b"\r\nMessage-ID: <" + REPRODUCER + b"@x>\r\n\r\nx", ENV)
    assert "\ufffd" in mail.subject and mail.subject.endswith("+2AA-x")
    assert mail.message_id is not None and "\ufffd" in mail.message_id


def test_a_utf7_word_that_decodes_to_a_lone_surrogate():
    word = b"=?utf-7?b?" + base64.b64encode(b"+2AA-") + b"?="
    mail = parse_email(b"Subject: " + word + b"\r\nFrom: " + word + b" <a@b.example>\r\n\r\nx", ENV)
    assert_carryable(mail)
    assert mail.subject == "\ufffd"


def test_a_utf7_body_and_attachment_name():
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain; charset=utf-7\r\n\r\nlone +2AA- surrogate\r\n--b\r\n"
           b"Content-Type: te\xffxt/x; name=\"=?utf-7?q?+2AA-?=\"\r\nContent-Disposition: attachment\r\n\r\n"
           b"data\r\n--b--\r\n")
    mail = parse_email(raw, ENV)
    assert_carryable(mail)
    assert mail.text is not None and "\ufffd" in mail.text


CHARSETS = ["utf-7", "utf-8", "iso-8859-1", "windows-1252", "shift_jis", "iso-2022-jp", "euc-kr",
            "gb2312", "koi8-r", "utf-16", "utf-32", "x-unknown", "utf-7*en", "us-ascii", "", "\xff"]
FIELDS = [b"Subject", b"From", b"To", b"Cc", b"Reply-To", b"Message-ID", b"In-Reply-To",
          b"References", b"List-Id", b"Date", b"Return-Path", b"Auto-Submitted", b"Precedence",
          b"Content-Type", b"List-Unsubscribe", b"X-Autoreply"]
_bytes = st.binary(max_size=24)
_text_bytes = st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=12).map(
    lambda t: t.encode("utf-8", "surrogatepass"))


@st.composite
def encoded_words(draw) -> bytes:
    charset = draw(st.sampled_from(CHARSETS)).encode("latin-1")
    kind = draw(st.sampled_from([b"b", b"q", b"B", b"Q"]))
    payload = draw(st.one_of(
        _bytes.map(base64.b64encode),  # valid base64 of any bytes
        _bytes,  # raw, even 8-bit, inside the word
        st.sampled_from([b"+2AA-", b"+2D3cAA-", b"KzJBQS0=", b"=ZZ", b"_", b"=00", b"=FF=FE"]),
        _text_bytes,
    ))
    return b"=?" + charset + b"?" + kind + b"?" + payload + b"?="


_piece = st.one_of(encoded_words(), _bytes, _text_bytes,
                   st.sampled_from([b"\xff", b"+2AA-", b" ", b"\r\n ", b"<", b">", b"@", b",", b'"',
                                    b"<a@b.example>", b"\" \"", b"=?", b"?=", b";", b"(", b")"]))
header_values = st.lists(_piece, max_size=8).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(FIELDS), header_values), min_size=1, max_size=8),
       st.sampled_from(CHARSETS), st.binary(max_size=64))
def test_any_header_bytes_charsets_and_encoded_words(headers, body_charset, body):
    raw = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    raw += b"Content-Type: text/plain; charset=\"" + body_charset.encode("latin-1") + b"\"\r\n\r\n" + body
    mail = parse_email(raw, ENV)
    assert_carryable(mail)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_at_all(raw):
    assert_carryable(parse_email(raw, ENV))
