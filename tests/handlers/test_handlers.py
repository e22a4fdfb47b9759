"""Shipped handlers, the loader, and the process-title cut."""
from __future__ import annotations

import json
import logging
import multiprocessing
import sys
from pathlib import Path
from typing import Callable

import pytest

from tenant_proc.handlers import command, jsonl
from tenant_proc.handlers.loader import HandlerContext, HandlerError, load_handler, resolve_target
from tenant_proc.message import Email
from tenant_proc.process.title import cut_utf8, format_title
from tenant_proc.spec import HandlerSpec, Secret, TenantSpec


def _email(uid: int = 5, tenant: str = "acme") -> Email:
    return Email(
        tenant_id=tenant, folder="INBOX", uid=uid, uidvalidity=9, message_id=f"<m{uid}@x>",
        subject="Hi", from_="a@example.com", to=["b@example.com"], raw=b"Subject: Hi\r\n\r\nbody\r\n",
        size=22, received_at=100.0, detected_at=101.0,
    )


def _context(tmp_path: Path, **options: object) -> HandlerContext:
    return HandlerContext(options=dict(options), logger=logging.getLogger("t"), tenant={}, base_dir=str(tmp_path))


def test_jsonl_fields_relative_path(tmp_path: Path) -> None:
    jsonl(_email(), _context(tmp_path, path="out/emails.jsonl"))
    [record] = [json.loads(l) for l in (tmp_path / "out" / "emails.jsonl").read_text().splitlines()]
    for key in ("tenant_id", "folder", "uid", "uidvalidity", "message_id", "subject", "from",
                "received_at", "handled_at"):
        assert key in record
    assert record["from"] == "a@example.com" and record["uid"] == 5
    assert record["received_at"] == 100.0 and record["handled_at"] >= 101.0


def _append_many(path: str, tenant: str, count: int) -> None:
    context = HandlerContext(options={"path": path}, logger=logging.getLogger("t"), tenant={})
    for uid in range(count):
        jsonl(_email(uid, tenant), context)


def lines_from_processes(path: Path, append: Callable[[str, str, int], None], count: int) -> list[dict]:
    """append(path, tenant, count) run by 4 processes at once (tenants t0..t3): the file's lines."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=append, args=(str(path), f"t{n}", count)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_one_line_per_email_from_many_processes(tmp_path: Path) -> None:
    records = lines_from_processes(tmp_path / "shared.jsonl", _append_many, 200)
    assert len(records) == 800
    assert {(r["tenant_id"], r["uid"]) for r in records} == {(f"t{n}", u) for n in range(4) for u in range(200)}


def test_command_gets_env_and_stdin(tmp_path: Path) -> None:
    script = (
        "import os, sys; open('out.txt', 'wb').write("
        "'|'.join(os.environ[k] for k in ('IDLE_TENANT_ID', 'IDLE_UID', 'IDLE_MESSAGE_ID', "
        "'IDLE_UIDVALIDITY', 'IDLE_FOLDER')).encode() + b'|' + sys.stdin.buffer.read())"
    )
    command(_email(), _context(tmp_path, argv=[sys.executable, "-c", script]))
    assert (tmp_path / "out.txt").read_bytes() == b"acme|5|<m5@x>|9|INBOX|Subject: Hi\r\n\r\nbody\r\n"


def test_command_failure_and_timeout_raise(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with 3: nope"):
        command(_email(), _context(tmp_path, argv=[sys.executable, "-c", "import sys; sys.stderr.write('nope'); sys.exit(3)"]))
    with pytest.raises(Exception, match="timed out"):
        command(_email(), _context(tmp_path, argv=["sleep", "5"], timeout=0.2))
    with pytest.raises(ValueError, match="argv"):
        command(_email(), _context(tmp_path))


@pytest.mark.parametrize(
    "target, message",
    [
        ("nocolon", "not of the form 'module:callable'"),
        ("no_such_module_x:f", "not found: cannot import no_such_module_x"),
        ("tenant_proc.handlers:nope", "not found: module tenant_proc.handlers has no attribute nope"),
        ("tenant_proc.handlers.command_runner:DEFAULT_COMMAND_TIMEOUT", "is not callable"),
    ],
)
def test_resolve_target_errors(target: str, message: str) -> None:
    with pytest.raises(HandlerError, match=message) as info:
        resolve_target(target)
    assert "\n" not in str(info.value)


class Recorder:
    instances = 0

    def __init__(self, options: dict) -> None:
        Recorder.instances += 1
        self.options = options
        self.seen: list[int] = []
        self.closed = False

    def __call__(self, email: Email, context: HandlerContext) -> None:
        self.seen.append(email.uid)

    def close(self) -> None:
        self.closed = True


def test_class_target_instantiated_once_with_options_and_closed(tmp_path: Path) -> None:
    spec = TenantSpec(
        id="acme", name="Acme", host="h", port=993, security="tls", username="u", password=Secret("pw"),
        handler=HandlerSpec(target=f"{__name__}:Recorder", options=(("k", 1),)), base_dir=str(tmp_path),
    )
    handler = load_handler(spec, logging.LoggerAdapter(logging.getLogger("t"), {}))
    handler(_email(1))
    handler(_email(2))
    instance = handler._instance
    assert isinstance(instance, Recorder) and Recorder.instances == 1
    assert instance.options == {"k": 1} and instance.seen == [1, 2]
    assert handler.context.tenant["id"] == "acme" and "password" not in handler.context.tenant
    handler.close()
    assert instance.closed


def test_title_cut_at_character_boundary() -> None:
    assert cut_utf8("Företag Å Bolaget AB") == "Företag Å Bol"
    assert cut_utf8("ÅÅÅÅÅÅÅÅ") == "ÅÅÅÅÅÅÅ"  # 16 bytes -> 7 whole characters, 14 bytes
    assert len(cut_utf8("日本語の会社名です")) == 5
    assert cut_utf8("Acme") == "Acme"
    assert format_title("Acme AB", "idle") == "Acme AB [idle] idle-supervisor"


def test_resolving_supabase_insert_preloads_supabase_for_the_children():
    """The supervisor resolves the handler before forking; supabase-py must come with it, or
    every tenant process would import (and own) its own copy."""
    import subprocess
    import sys

    code = ("import sys; from tenant_proc.handlers.loader import resolve_target; "
            "resolve_target('tenant_proc.handlers:supabase_insert'); "
            "print('supabase' in sys.modules, 'httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
