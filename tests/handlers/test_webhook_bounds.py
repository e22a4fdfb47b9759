"""Issue 22 items 2 and 12: a slow or hostile webhook receiver never holds a company process.

Each attempt ends within `timeout` and within the tenant's request bound, as a whole (a receiver
trickling its answer a byte every 0.5 s included), the tenant beats before every attempt, at most
64 KB of an answer is read, and plain http:// goes only to this machine unless allowed. Against
the real receiver (tests/servers/webhook_receiver.py), then the real supervisor with Dovecot.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from tenant_proc.handlers import webhook
from tenant_proc.handlers.loader import HandlerError, load_handler
from tenant_proc.handlers.webhook_sender import WebhookError
from tests.handlers.test_webhook import SECRET, _call, _context, _email, _run, _wait_ledger
from tests.harness.forked import peak_rss_growth
from tests.servers.hostile_http import MB
from tests.servers.imap.mail_helpers import make_message
from tests.servers.webhook_receiver import Reply, WebhookReceiver


@pytest.fixture
def receiver():
    with WebhookReceiver(SECRET) as server:
        yield server


def test_a_trickling_answer_is_cut_at_the_attempt_timeout(receiver):
    """httpx's own timeout (per socket read) let this run until the receiver stopped (30 s)."""
    receiver.plan(Reply(trickle=0.5))
    started = time.monotonic()
    with pytest.raises(WebhookError) as cut:
        _call(receiver, timeout=1, tries=1)
    assert time.monotonic() - started < 4  # 1 s budget; generous for a loaded machine
    assert "no answer within 1s" in str(cut.value)


def test_an_attempt_is_cut_to_the_request_bound_below_a_longer_timeout(receiver, caplog):
    receiver.plan(Reply(trickle=0.5))
    options = {"url": receiver.url, "secret": SECRET, "timeout": 20, "tries": 1}
    context = dataclasses.replace(_context(**options), request_timeout=1.0)
    handler = webhook(options)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(WebhookError) as cut:
        handler(_email(), context)
    handler.close()
    assert time.monotonic() - started < 4
    assert "within 1s" in str(cut.value) and "above the request bound 1s" in caplog.text


def test_the_tenant_beats_before_the_first_attempt(receiver):
    context = _call(receiver)
    [request] = receiver.requests()
    beats = context.extra["beats"]
    assert beats and beats[0] <= request.at, "no heartbeat before the POST"


def _post_against(url: str) -> object:
    options = {"url": url, "secret": SECRET, "timeout": 5, "tries": 1}
    handler = webhook(options)
    try:
        return handler(_email(), _context(**options))
    finally:
        handler.close()


def test_a_64_mb_answer_costs_the_tenant_at_most_a_little(receiver):
    """The review saw a 64 MB 503 answer grow the process by 66 MB."""
    receiver.plan(Reply(200), Reply(503, b'{"error": "busy"}', filler=64 * MB))
    growth, outcome = peak_rss_growth(lambda: _post_against(receiver.url),
                                      warmup=lambda: _post_against(receiver.url))
    assert "HTTP 503" in outcome and '{"error": "busy"}xxx' in outcome, outcome
    assert growth < 4 * MB, f"the process grew by {growth / MB:.1f} MB"


def test_a_large_2xx_answer_is_a_success_read_only_in_part(receiver):
    receiver.plan(Reply(200), Reply(200, filler=16 * MB))
    growth, outcome = peak_rss_growth(lambda: _post_against(receiver.url),
                                      warmup=lambda: _post_against(receiver.url))
    assert outcome == "None", outcome  # handled
    assert growth < 4 * MB, f"the process grew by {growth / MB:.1f} MB"


@pytest.mark.parametrize("url", ["http://answers.example/in", "http://10.0.0.7:8080/in",
                                 "http://[2001:db8::1]/in"])
def test_plain_http_to_another_host_is_refused_unless_allowed(url):
    with pytest.raises(ValueError, match="refusing plain http to .*use https, or set allow_insecure"):
        webhook({"url": url, "secret": SECRET})
    assert webhook({"url": url, "secret": SECRET, "allow_insecure": True}).url == url
    assert webhook({"url": url, "secret": SECRET, "allow_insecure": "true"}).url == url  # from the environment


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/in", "http://localhost/in", "http://[::1]/in",
                                 "https://answers.example/in"])
def test_loopback_http_and_https_need_nothing(url):
    assert webhook({"url": url, "secret": SECRET}).url == url


def test_a_tenant_webhook_url_in_clear_fails_that_tenant_alone(tmp_path):
    from supervisor.config.load import load_config
    from supervisor.tenants.rows import build_tenant_specs

    path = tmp_path / "config.toml"
    path.write_text('[handler]\ntarget = "tenant_proc.handlers:webhook"\nurl = "https://all.example/"\n'
                    f'secret = "{SECRET}"\n')
    base = {"host": "h", "username": "u", "password": "p"}
    specs = build_tenant_specs(load_config(path), [
        {**base, "id": "clear", "webhook_url": "http://own.example/in"}, {**base, "id": "fine"}],
        environ={}).specs
    log = logging.LoggerAdapter(logging.getLogger("t"), {})
    with pytest.raises(HandlerError, match="refusing plain http to own.example"):
        load_handler(specs["clear"], log)
    assert load_handler(specs["fine"], log)._instance.url == "https://all.example/"


@pytest.mark.integration
def test_a_trickling_receiver_never_gets_the_tenant_killed_as_hung(dovecot, tmp_path, receiver):
    """With heartbeat_timeout 4 s the request bound is (4 - 0.5) / 2 = 1.75 s: three trickled
    answers cost three cut attempts, then the fourth is answered, in one handler call. Before,
    the first attempt went on for 30 s: the tenant was killed as hung, again and again."""
    receiver.plan(*[Reply(trickle=0.5)] * 3)
    with _run(tmp_path, dovecot, receiver, timeout=10, tries=4, retry_budget=30,
              supervisor={"heartbeat_timeout": 4},
              imap={"connect_timeout": 2, "command_timeout": 2}).start() as run:
        dovecot.deliver("acme", make_message("to a slow receiver"))
        got = receiver.wait_requests(4, timeout=60)
        _wait_ledger(run, got[0].document["uid"], "processed")
        assert [r.answered for r in got] == [None, None, None, 200]
        assert {r.document["redelivered"] for r in got} == {False}
        tenant = run.wait_for(lambda s: s["tenants"]["acme"]["webhook"]["2xx"] == 1, 15,
                              "counters")["tenants"]["acme"]
        assert tenant["restarts"] == 0, run.log_text()[-3000:]
        assert tenant["webhook"]["errors"] == 3
        assert "hung" not in run.log_text()
