"""The signed webhook handler (issue 13).

First the handler alone against the real receiver (tests/servers/webhook_receiver.py), then the real
supervisor with real Dovecot: delivery, retries, permanent failures, a hanging or absent
receiver, a tenant killed mid-POST. Replaying the emails it gave up on (`idle-supervisor failed` /
`retry`) is in tests/cli/test_failed.py.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tenant_proc.handlers import webhook
from tenant_proc.handlers.loader import HandlerContext, PermanentHandlerError
from tenant_proc.handlers.webhook_sender import WebhookError
from tenant_proc.message import Email
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message
from tests.servers.webhook_receiver import Reply, WebhookReceiver, signature_ok

SECRET = "whsec-test-0123456789abcdef"


@pytest.fixture
def receiver():
    with WebhookReceiver(SECRET) as server:
        yield server


def _email(uid: int = 7, redelivered: bool = False, raw: bytes = b"Subject: Hi\r\n\r\nbody\r\n") -> Email:
    return Email(tenant_id="acme", folder="INBOX", uid=uid, uidvalidity=42, message_id=f"<m{uid}@x>",
                 subject="Hi", from_="a@example.com", to=["b@example.com"], cc=["c@example.com"],
                 text="body", attachments=[{"name": "a.pdf", "content_type": "application/pdf", "size": 3}],
                 raw=raw, size=len(raw), received_at=100.0, detected_at=101.0, redelivered=redelivered)


def _context(**options: Any) -> HandlerContext:
    beats: list[float] = []
    return HandlerContext(options=options, logger=logging.getLogger("t"),
                          tenant={"id": "acme", "name": "Acme AB"}, counters={},
                          keepalive=lambda: beats.append(time.monotonic()),
                          extra={"beats": beats})


def _call(receiver: WebhookReceiver, email: Email | None = None, **options: Any) -> HandlerContext:
    options = {"url": receiver.url, "secret": SECRET, "timeout": 2, **options}
    context = _context(**options)
    handler = webhook(options)
    try:
        handler(email or _email(), context)
    finally:
        handler.close()
    return context


# ---- the handler alone --------------------------------------------------------------------

def test_one_signed_idempotent_post_with_the_documented_fields(receiver):
    context = _call(receiver, headers=(("X-Tenant-Group", "se"),))
    [got] = receiver.requests()
    assert got.signature_ok
    assert got.headers["content-type"] == "application/json"
    assert got.headers["idempotency-key"] == "acme:INBOX:42:7"
    assert got.headers["x-tenant-group"] == "se"
    doc = got.document
    for key in ("tenant_id", "tenant_name", "folder", "uidvalidity", "uid", "message_id", "subject",
                "from", "to", "cc", "date", "received_at", "detected_at", "text", "html",
                "attachments", "redelivered"):
        assert key in doc, key
    assert doc["tenant_name"] == "Acme AB" and doc["cc"] == ["c@example.com"]
    assert doc["redelivered"] is False and "raw" not in doc
    assert doc["attachments"] == [{"name": "a.pdf", "content_type": "application/pdf", "size": 3}]
    assert context.counters["webhook_attempts"] == 1 and context.counters["webhook_2xx"] == 1


def test_a_tampered_body_fails_verification():
    ts = str(int(time.time()))
    good = "sha256=" + hmac.new(SECRET.encode(), ts.encode() + b"." + b"{}", hashlib.sha256).hexdigest()
    headers = {"x-idle-timestamp": ts, "x-idle-signature": good}
    assert signature_ok(SECRET, headers, b"{}")
    assert not signature_ok(SECRET, headers, b"{ }")
    assert not signature_ok("other", headers, b"{}")


def test_raw_only_when_asked_and_within_the_cap(receiver):
    _call(receiver, include_raw=True)
    _call(receiver, include_raw=True, max_raw_bytes=5)
    first, second = (r.document for r in receiver.requests())
    assert base64.b64decode(first["raw"]) == _email().raw
    assert second["raw"] is None and "max_raw_bytes" in second["raw_omitted"]


def test_500_three_times_then_200_is_four_attempts_in_one_call(receiver):
    receiver.plan(500, 500, 500)
    context = _call(receiver)
    got = receiver.requests()
    assert [r.answered for r in got] == [500, 500, 500, 200]
    assert {r.headers["idempotency-key"] for r in got} == {"acme:INBOX:42:7"}
    assert all(r.signature_ok for r in got)
    assert context.counters["webhook_attempts"] == 4 and context.counters["webhook_retries"] == 3
    assert context.counters["webhook_5xx"] == 3 and context.counters["webhook_2xx"] == 1


def test_429_retry_after_is_honoured(receiver):
    receiver.plan(Reply(429, retry_after=2))
    context = _call(receiver)
    first, second = receiver.requests()
    assert second.at - first.at >= 1.9  # waited as asked (a lower bound only)
    assert context.extra["beats"], "heartbeats were offered while waiting"


def test_400_is_permanent_with_status_and_body_in_the_error(receiver):
    receiver.plan(Reply(400, b'{"error": "unknown mailbox ' + SECRET.encode() + b'"}'))
    with pytest.raises(PermanentHandlerError) as info:
        _call(receiver)
    assert "HTTP 400" in str(info.value) and "unknown mailbox" in str(info.value)
    assert SECRET not in str(info.value)
    assert len(receiver.requests()) == 1


def test_a_hanging_receiver_times_out_and_is_retried(receiver):
    receiver.plan(Reply(hang=4))
    context = _call(receiver, timeout=1)
    assert [r.answered for r in receiver.wait_requests(2)][1] == 200
    assert context.counters["webhook_errors"] == 1 and context.counters["webhook_retries"] == 1


def test_receiver_down_raises_a_retryable_error_without_the_secret(receiver):
    url = receiver.url
    receiver.down()
    with pytest.raises(WebhookError) as info:
        _call(receiver, url=url, tries=2, retry_budget=5)
    assert "ConnectError" in str(info.value) and SECRET not in str(info.value)


def test_missing_secret_fails_at_load(monkeypatch):
    monkeypatch.delenv("NO_SUCH_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_WEBHOOK_SECRET is not set"):
        webhook({"url": "https://x.example/", "secret_env": "NO_SUCH_WEBHOOK_SECRET"})
    with pytest.raises(ValueError, match="secret_env"):
        webhook({"url": "https://x.example/"})


def test_a_literal_secret_in_the_config_never_prints(tmp_path):
    from supervisor.config.load import load_config
    from tenant_proc.spec import Secret

    path = tmp_path / "config.toml"
    path.write_text(f'[handler]\ntarget = "tenant_proc.handlers:webhook"\n'
                    f'url = "https://x.example/"\nsecret = "{SECRET}"\n')
    handler = load_config(path).handler
    assert isinstance(handler.options_dict()["secret"], Secret)
    assert SECRET not in repr(handler) and SECRET not in repr(webhook(handler.options_dict()))


def test_a_tenant_webhook_url_replaces_the_handler_url(tmp_path):
    from supervisor.config.load import load_config
    from supervisor.tenants.rows import build_tenant_specs
    from tenant_proc.handlers.loader import load_handler

    path = tmp_path / "config.toml"
    path.write_text('[handler]\ntarget = "tenant_proc.handlers:webhook"\nurl = "https://all.example/"\n'
                    f'secret = "{SECRET}"\n')
    config = load_config(path)
    base = {"host": "h", "username": "u", "password": "p"}
    load = build_tenant_specs(config, [
        {**base, "id": "own", "webhook_url": "https://own.example/in"}, {**base, "id": "shared"},
        {**base, "id": "bad", "webhook_url": "ftp://x"}], environ={})
    assert "http:// or https://" in load.errors["bad"][1]
    log = logging.LoggerAdapter(logging.getLogger("t"), {})
    assert load_handler(load.specs["own"], log)._instance.url == "https://own.example/in"
    assert load_handler(load.specs["shared"], log)._instance.url == "https://all.example/"


# ---- the real supervisor --------------------------------------------------------------------

def _run(tmp_path: Path, dovecot: Any, receiver: WebhookReceiver, imap: dict | None = None,
         supervisor: dict | None = None, extra_sections: dict | None = None,
         **handler: Any) -> SupervisorRun:
    dovecot.add_user("acme", "acme-pw")
    options = {"target": "tenant_proc.handlers:webhook", "url": receiver.url,
               "secret_env": "WEBHOOK_SECRET", "timeout": 2, **handler}
    return SupervisorRun(tmp_path / "run", dovecot, [TenantEntry("acme", "acme", "acme-pw", name="Acme AB")],
                         handler=options, imap={"retry_interval": 1, **(imap or {})},
                         supervisor=supervisor or {}, extra_env={"WEBHOOK_SECRET": SECRET},
                         extra_sections=extra_sections or {})


def _ledger(run: SupervisorRun) -> dict[int, tuple[str, int, str | None]]:
    with sqlite3.connect(run.state_dir / "checkpoints.sqlite3") as db:
        rows = db.execute("SELECT uid, status, attempts, error FROM ledger WHERE tenant_id = 'acme'")
        return {uid: (status, attempts, error) for uid, status, attempts, error in rows}


def _wait_ledger(run: SupervisorRun, uid: int, status: str, timeout: float = 30) -> tuple:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _ledger(run).get(uid)
        if row and row[0] == status:
            return row
        time.sleep(0.1)
    raise AssertionError(f"uid {uid} not {status}: {_ledger(run)}\n{run.log_text()[-3000:]}")


def _successes(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    return [r.document for r in receiver.requests() if r.answered == 200]


def _assert_secret_nowhere(run: SupervisorRun) -> None:
    assert SECRET not in run.log_text()
    assert SECRET not in (run.state_dir / "status.json").read_text()
    assert SECRET not in run.cli("status", "--json").stdout
    assert run.proc is not None
    for proc in [psutil.Process(run.proc.pid), *run.live_children()]:
        for name in ("cmdline", "status", "comm"):
            assert SECRET.encode() not in Path(f"/proc/{proc.pid}/{name}").read_bytes()


@pytest.mark.integration
def test_mail_is_delivered_once_signed_and_counted(dovecot, tmp_path, receiver):
    with _run(tmp_path, dovecot, receiver).start() as run:
        dovecot.deliver("acme", make_message("first", message_id="<first@x>"))
        [got] = receiver.wait_requests(1)
        uid = got.document["uid"]
        _wait_ledger(run, uid, "processed")
        assert got.signature_ok and got.answered == 200
        assert got.headers["idempotency-key"] == f"acme:INBOX:{got.document['uidvalidity']}:{uid}"
        assert got.document["message_id"] == "<first@x>" and got.document["tenant_name"] == "Acme AB"
        status = run.wait_for(lambda s: s["tenants"]["acme"]["webhook"]["2xx"] == 1
                              and s["tenants"]["acme"]["failed_in_ledger"] == 0, 15, "counters")
        tenant = status["tenants"]["acme"]
        assert tenant["webhook"]["attempts"] == 1 and tenant["handler_calls"] == 1
        time.sleep(1)
        assert len(receiver.requests()) == 1  # handled once
        _assert_secret_nowhere(run)


@pytest.mark.integration
def test_500_three_times_then_200_is_handled_once_after_four_attempts(dovecot, tmp_path, receiver):
    from tests.service.test_metrics import free_port, sample, scrape

    receiver.plan(500, 500, 500)
    port = free_port()
    with _run(tmp_path, dovecot, receiver,
              extra_sections={"metrics": {"listen": f"127.0.0.1:{port}"}}).start() as run:
        dovecot.deliver("acme", make_message("flaky"))
        got = receiver.wait_requests(4)
        _wait_ledger(run, got[0].document["uid"], "processed")
        assert [r.answered for r in got] == [500, 500, 500, 200]
        assert len({r.headers["idempotency-key"] for r in got}) == 1
        run.wait_for(lambda s: s["tenants"]["acme"]["webhook"]["retries"] == 3
                     and s["tenants"]["acme"]["webhook"]["5xx"] == 3, 15, "retry counters")
        time.sleep(1)
        assert len(receiver.requests()) == 4
        text = scrape(port)
        assert sample(text, "idle_supervisor_webhook_attempts_total", tenant="acme") == 4
        assert sample(text, "idle_supervisor_webhook_retries_total", tenant="acme") == 3
        assert sample(text, "idle_supervisor_webhook_responses_total", tenant="acme", **{"class": "5xx"}) == 3
        assert sample(text, "idle_supervisor_webhook_responses_total", tenant="acme", **{"class": "2xx"}) == 1
        assert sample(text, "idle_supervisor_handler_calls_total", tenant="acme") == 1
        assert sample(text, "idle_supervisor_handler_seconds_total", tenant="acme") > 0
        assert sample(text, "idle_supervisor_emails_in_failed", tenant="acme") == 0


@pytest.mark.integration
def test_a_hanging_receiver_is_retried_and_the_tenant_never_killed_as_hung(dovecot, tmp_path, receiver):
    # Five hangs of 2 s plus the pauses: longer than heartbeat_timeout (8 s) in one handler call.
    receiver.plan(*[Reply(hang=5)] * 5)
    with _run(tmp_path, dovecot, receiver, tries=6, retry_budget=24,
              supervisor={"heartbeat_timeout": 8}).start() as run:
        dovecot.deliver("acme", make_message("slow"))
        got = receiver.wait_requests(6, timeout=60)
        _wait_ledger(run, got[0].document["uid"], "processed")
        assert got[-1].answered == 200
        tenant = run.tenant("acme")
        assert tenant["restarts"] == 0 and "hung" not in (tenant["last_error"] or "")
        assert "hung" not in run.log_text()


@pytest.mark.integration
@pytest.mark.slow
def test_receiver_down_for_20s_then_everything_arrives_in_order(dovecot, tmp_path, receiver):
    url = receiver.url
    with _run(tmp_path, dovecot, receiver, imap={"max_attempts": 100}).start() as run:
        receiver.down()
        for n in range(3):
            dovecot.deliver("acme", make_message(f"while down {n}"))
        time.sleep(20)
        receiver.up()
        assert receiver.url == url
        deadline = time.monotonic() + 60
        while len(_successes(receiver)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        subjects = [d["subject"] for d in _successes(receiver)]
        assert subjects == [f"while down {n}" for n in range(3)], run.log_text()[-2000:]
        assert run.tenant("acme")["webhook"]["errors"] > 0


@pytest.mark.integration
def test_sigkill_during_a_post_redelivers_with_the_same_key(dovecot, tmp_path, receiver):
    receiver.plan(Reply(hang=20))
    with _run(tmp_path, dovecot, receiver, timeout=15).start() as run:
        dovecot.deliver("acme", make_message("crash window"))
        assert receiver.request_started.wait(20)
        first = receiver.requests()[0]
        assert first.document["redelivered"] is False
        os.kill(run.child_pids()["acme"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not _successes(receiver) and time.monotonic() < deadline:
            time.sleep(0.1)
        [again] = _successes(receiver)
        assert again["redelivered"] is True and again["uid"] == first.document["uid"]
        second = [r for r in receiver.requests() if r.answered == 200][0]
        assert second.headers["idempotency-key"] == first.headers["idempotency-key"]
        _wait_ledger(run, again["uid"], "processed")
