"""A tenant process's login compiles no regex: the tag prefix is fixed, its regex cached in the
parent before the fork (tenant_proc/imap/tags.py), on a real Dovecot TLS session."""
from __future__ import annotations

import imaplib
import re
import sys
from pathlib import Path

from tenant_proc.imap.connect import open_client  # must bring imap_tags in by itself
from tenant_proc.signin.login import login
from tests.harness.forked import run_in_fresh_process
from tests.process.test_tenant_process import make_spec

imap_tags = sys.modules.get("tenant_proc.imap.tags")


def test_a_forked_tenant_logs_in_without_compiling_a_regex(dovecot, tmp_path: Path):
    assert imap_tags is not None, "tenant_proc.imap.connect does not import imap_tags"
    dovecot.add_user("alice", "alice-pw")
    spec = make_spec(dovecot, tmp_path, user="alice")

    def log_in_counting_compiles() -> str:  # as a tenant process: forked after the imports
        compiles = []
        real_compile = re._compiler.compile  # type: ignore[attr-defined]

        def counting_compile(*args, **kwargs):
            compiles.append(args[0])
            return real_compile(*args, **kwargs)

        re._compiler.compile = counting_compile  # type: ignore[attr-defined]
        client = open_client(spec)
        login(client, spec)
        client.select_folder("INBOX")
        tagpre = client._imap.tagpre
        client.logout()
        return f"{len(compiles)} {tagpre.decode()}"

    count, tagpre = run_in_fresh_process(log_in_counting_compiles).split()
    assert tagpre == imaplib.Int2AP(imap_tags.TAG_NUMBER).decode()
    assert count == "0", "a login in a fresh tenant process compiled a regex"


def test_the_cached_pattern_is_the_one_imaplib_compiles():
    """If a Python upgrade changes imaplib's pattern, the cache would silently miss."""
    import inspect

    assert imap_tags is not None

    source = inspect.getsource(imaplib.IMAP4._connect)
    assert "(?P<tag>'" in source and r"\d+) (?P<type>[A-Z]+) (?P<data>.*)'" in source
    assert imap_tags.tag_regex_pattern().startswith(b"(?P<tag>" + imaplib.Int2AP(imap_tags.TAG_NUMBER))
