"""The product end to end: the real supervisor (subprocess), real tenant processes, real Dovecot.

Each test drives it only through its interface (config, signals, CLI, status.json, jsonl) and
asserts outcomes: which emails were handled, how many times, by which process.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.harness.supervisor_run import (
    SupervisorRun,
    TenantEntry,
    process_gone_within,
    unique_emails,
)
from tests.servers.imap.mail_helpers import make_message

pytestmark = pytest.mark.integration


def three_tenants(dovecot) -> list[TenantEntry]:
    for user in ("acme", "globex", "initech"):
        dovecot.add_user(user, f"{user}-pw")
    return [TenantEntry("acme", "acme", "acme-pw", name="Acme AB"),
            TenantEntry("globex", "globex", "globex-pw", name="Globex Corp"),
            TenantEntry("initech", "initech", "initech-pw", name="Företag Å Bolaget")]


def test_idle_delivery_to_several_companies(dovecot, tmp_path):
    with SupervisorRun(tmp_path, dovecot, three_tenants(dovecot)).start() as run:
        status = run.status()
        assert {t["mode"] for t in status["tenants"].values()} == {"idle"}
        assert {t["state"] for t in status["tenants"].values()} == {"idle"}
        for user in ("acme", "globex", "initech"):
            dovecot.deliver(user, make_message(f"hello {user}"))
        emails = run.wait_emails(3, timeout=10)
        assert {e["tenant_id"]: e["subject"] for e in emails} == {
            "acme": "hello acme", "globex": "hello globex", "initech": "hello initech"}
        for e in emails:
            assert {"tenant_id", "folder", "uid", "uidvalidity", "message_id", "subject", "from",
                    "received_at", "handled_at"} <= set(e)
            assert isinstance(e["received_at"], float) and isinstance(e["handled_at"], float)
            assert e["folder"] == "INBOX" and e["from"]
        run.wait_for(lambda s: all(t["processed"] == 1 for t in s["tenants"].values()), 5,
                     "processed counters")


def test_old_mail_is_not_processed_on_first_start(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    dovecot.deliver("acme", make_message("old"))
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")]).start() as run:
        dovecot.deliver("acme", make_message("new"))
        assert [e["subject"] for e in run.wait_emails(1)] == ["new"]
        time.sleep(0.5)
        assert len(run.emails()) == 1


def test_polling_fallback_when_server_has_no_idle(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    tenants = [TenantEntry("acme", "acme", "acme-pw", host="127.0.0.2")]
    with SupervisorRun(tmp_path, dovecot, tenants, imap={"poll_interval": 1}).start() as run:
        assert run.tenant("acme")["mode"] == "poll"
        assert run.tenant("acme")["state"] == "polling"
        dovecot.deliver("acme", make_message("polled"))
        assert run.wait_emails(1, timeout=10)[0]["subject"] == "polled"


def test_tls_with_private_ca_works_and_untrusted_certificate_is_refused(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    dovecot.add_user("wary", "wary-pw")
    tenants = [TenantEntry("acme", "acme", "acme-pw"),  # trusts the private CA
               TenantEntry("wary", "wary", "wary-pw", ca_file=None)]  # system trust only
    with SupervisorRun(tmp_path, dovecot, tenants).start() as run:
        assert run.tenant("acme")["state"] == "idle"
        wary = run.wait_for(lambda s: s["tenants"]["wary"]["state"] == "failed", 10, "wary failed")
        error = wary["tenants"]["wary"]["last_error"]
        assert "certificate" in error.lower(), error
        assert wary["tenants"]["wary"]["restarts"] == 0  # not fast-retried
        dovecot.deliver("acme", make_message("still works"))
        assert run.wait_emails(1)[0]["tenant_id"] == "acme"


def test_crashed_child_restarts_after_backoff_and_loses_nothing(dovecot, tmp_path):
    tenants = three_tenants(dovecot)
    with SupervisorRun(tmp_path, dovecot, tenants, supervisor={"restart_backoff": 3}).start() as run:
        old_pid = run.child_pids()["acme"]
        others = {k: v for k, v in run.child_pids().items() if k != "acme"}
        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        run.wait_for(lambda s: s["tenants"]["acme"]["state"] == "backoff", 5, "backoff")
        for i in range(3):  # mail arriving while the company is down
            dovecot.deliver("acme", make_message(f"during outage {i}"))
        status = run.wait_for(lambda s: s["tenants"]["acme"]["state"] == "idle"
                              and s["tenants"]["acme"]["pid"] != old_pid, 15, "restart")
        assert time.monotonic() - killed_at >= 2.9  # the configured backoff was honoured
        assert status["tenants"]["acme"]["restarts"] == 1
        assert "[Acme AB] killed by SIGKILL; restarting in 3s" in run.log_text()
        emails = run.wait_emails(3, tenant="acme")
        time.sleep(1)
        emails = [e for e in run.emails() if e["tenant_id"] == "acme"]
        assert sorted(e["subject"] for e in emails) == [f"during outage {i}" for i in range(3)]
        assert len(unique_emails(emails)) == len(emails) == 3
        assert {k: v for k, v in run.child_pids().items() if k != "acme"} == others


@pytest.mark.parametrize("idle_heartbeat_interval, detected_by", [
    (60, "and it is stopped: killed as hung"),  # quiet idle tenant: caught by the /proc check
    (0.3, "no heartbeat for 2s"),  # idle tenants beat as often as busy ones: the missing beat
])
def test_hung_child_is_killed_and_restarted(dovecot, tmp_path, idle_heartbeat_interval, detected_by):
    dovecot.add_user("acme", "acme-pw")
    settings = {"heartbeat_interval": 0.3, "heartbeat_timeout": 2, "kill_timeout": 1,
                "restart_backoff": 1, "idle_heartbeat_interval": idle_heartbeat_interval}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")],
                       supervisor=settings, imap={"connect_timeout": 1.5, "command_timeout": 1.5}
                       ).start() as run:
        pid = run.child_pids()["acme"]
        os.kill(pid, signal.SIGSTOP)  # alive but silent: the classic hang
        status = run.wait_for(lambda s: s["tenants"]["acme"]["pid"] not in (None, pid)
                              and s["tenants"]["acme"]["state"] == "idle", 15, "hung child replaced")
        assert not process_gone_within([pid], 2)
        assert detected_by in run.log_text()
        assert status["tenants"]["acme"]["restarts"] == 1
        dovecot.deliver("acme", make_message("after hang"))
        assert run.wait_emails(1)[0]["subject"] == "after hang"


def test_idle_tenant_beats_at_the_idle_interval_and_is_not_taken_for_hung(dovecot, tmp_path):
    """An idling tenant with nothing to report stays silent past heartbeat_timeout (that is
    the idle cost saved) and is left alone; mail makes it report at once."""
    dovecot.add_user("acme", "acme-pw")
    settings = {"heartbeat_interval": 0.3, "heartbeat_timeout": 2, "kill_timeout": 1,
                "idle_heartbeat_interval": 4}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")],
                       supervisor=settings, imap={"connect_timeout": 1.5, "command_timeout": 1.5}
                       ).start() as run:
        pid = run.child_pids()["acme"]
        ages = []
        deadline = time.monotonic() + 9
        while time.monotonic() < deadline:
            ages.append(run.status()["tenants"]["acme"]["last_heartbeat_age"] or 0.0)
            time.sleep(0.25)
        assert max(ages) > 2.5, "idle beats still come every heartbeat_interval"
        assert max(ages) < 4 + 2, "no beat within the idle interval"
        assert run.child_pids()["acme"] == pid and "killed as hung" not in run.log_text()
        dovecot.deliver("acme", make_message("wakes it"))
        assert run.wait_emails(1)[0]["subject"] == "wakes it"
        assert run.status()["tenants"]["acme"]["restarts"] == 0


def test_sighup_adds_removes_changes_and_leaves_unchanged_alone(dovecot, tmp_path):
    tenants = three_tenants(dovecot)
    dovecot.add_user("newco", "newco-pw")
    with SupervisorRun(tmp_path, dovecot, tenants).start() as run:
        before = run.child_pids()
        run.tenants = [tenants[0],  # acme: unchanged
                       TenantEntry("globex", "globex", "globex-pw", name="Globex Renamed"),  # changed
                       # added (inline password: its env var did not exist at start); initech removed
                       TenantEntry("newco", "newco", "newco-pw", name="NewCo", via_env=False)]
        run.write_config()
        run.signal(signal.SIGHUP)
        status = run.wait_for(lambda s: set(s["tenants"]) == {"acme", "globex", "newco"}
                              and s["tenants"]["globex"]["name"] == "Globex Renamed"
                              and all(t["state"] == "idle" for t in s["tenants"].values()),
                              15, "reload applied")
        after = {tid: t["pid"] for tid, t in status["tenants"].items()}
        assert after["acme"] == before["acme"]
        assert after["globex"] != before["globex"]
        assert not process_gone_within([before["initech"], before["globex"]], 5)
        dovecot.deliver("newco", make_message("to the new company"))
        assert run.wait_emails(1, tenant="newco")[0]["subject"] == "to the new company"
        # the CLI's reload goes through the pid file to the same SIGHUP
        result = run.cli("reload")
        assert result.returncode == 0 and "SIGHUP" in result.stdout
        time.sleep(1)
        assert run.child_pids() == after


def test_sigterm_logs_out_every_child_and_leaves_nothing(dovecot, tmp_path):
    with SupervisorRun(tmp_path, dovecot, three_tenants(dovecot)).start() as run:
        pids = list(run.child_pids().values())
        assert sorted(dovecot.who()) == ["acme", "globex", "initech"]
        assert run.stop(timeout=15) == 0
        assert not process_gone_within(pids, 2)
        log = run.log_text()
        assert log.count("stopped (exit code 0)") == 3, log
        # Each heard it through the shared shutdown pipe (one close() for all), not a message
        # or a signal of its own (supervisor/forking.ShutdownPipe).
        assert log.count("stopped (supervisor shutdown)") == 3, log
        assert dovecot.sessions_after(5) == []
        assert not (run.state_dir / "supervisor.pid").exists()


def test_supervisor_sigkill_takes_children_down(dovecot, tmp_path):
    with SupervisorRun(tmp_path, dovecot, three_tenants(dovecot)).start() as run:
        pids = list(run.child_pids().values())
        run.signal(signal.SIGKILL)
        run.proc.wait(5)
        assert process_gone_within(pids, 3) == []


def test_poison_email_fails_after_max_attempts_and_later_mail_flows(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    handler = {"target": "tests.harness.handlers_for_tests:poison_aware", "path": str(tmp_path / "emails.jsonl")}
    imap = {"max_attempts": 3, "retry_interval": 0.3}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")],
                       handler=handler, imap=imap).start() as run:
        dovecot.deliver("acme", make_message("POISON pill"))
        dovecot.deliver("acme", make_message("good one"))
        status = run.wait_for(lambda s: s["tenants"]["acme"]["failed"] == 1
                              and s["tenants"]["acme"]["processed"] == 1, 20, "poison skipped")
        assert [e["subject"] for e in run.emails()] == ["good one"]
        assert run.log_text().count("ValueError: cannot handle uid") >= 3
        assert status["tenants"]["acme"]["state"] == "idle"


def test_process_titles_begin_with_the_company_name(dovecot, tmp_path):
    with SupervisorRun(tmp_path, dovecot, three_tenants(dovecot)).start() as run:
        for tid, name in (("acme", "Acme AB"), ("initech", "Företag Å Bolaget")):
            pid = run.child_pids()[tid]
            proc = psutil.Process(pid)
            assert " ".join(proc.cmdline()).startswith(f"{name} [idle]")
            comm = Path(f"/proc/{pid}/comm").read_bytes().rstrip(b"\n")
            assert len(comm) <= 15 and name.encode().startswith(comm), comm
            comm.decode("utf-8")  # cut at a character boundary
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert f"{tid}-pw".encode() not in environ
        ps = psutil.Process(run.child_pids()["acme"]).name()
        assert ps.startswith("Acme AB")


def test_wrong_password_fails_clearly_without_a_retry_loop(dovecot, tmp_path):
    dovecot.add_user("acme", "acme-pw")
    dovecot.add_user("locked", "right-pw")
    tenants = [TenantEntry("acme", "acme", "acme-pw"),
               # its own loopback address: Dovecot slows every login from an IP after a failure
               TenantEntry("locked", "locked", "WRONG-pw-123", host="127.0.0.3")]
    with SupervisorRun(tmp_path, dovecot, tenants, supervisor={"restart_backoff": 0.5}).start() as run:
        status = run.wait_for(lambda s: s["tenants"]["locked"]["state"] == "failed", 30, "failed")
        assert "auth" in status["tenants"]["locked"]["last_error"].lower()
        time.sleep(3)
        assert run.tenant("locked")["restarts"] == 0
        assert run.tenant("acme")["state"] == "idle"
        assert "WRONG-pw-123" not in run.log_text()
        assert "WRONG-pw-123" not in (run.state_dir / "status.json").read_text()
        table = run.cli("status")
        assert "locked" in table.stdout and "failed" in table.stdout and table.returncode == 0


def test_status_cli_table_and_json(dovecot, tmp_path):
    with SupervisorRun(tmp_path, dovecot, three_tenants(dovecot)).start() as run:
        table = run.cli("status")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[1].split()[:5] == ["TENANT", "NAME", "PID", "STATE", "MODE"]
        assert any(line.startswith("acme") and " idle " in line for line in lines)
        as_json = run.cli("status", "--json")
        import json

        data = json.loads(as_json.stdout)
        assert data["supervisor"]["tenants"] == 3 and data["supervisor"]["running"] is True
        assert data["tenants"]["acme"]["rss_bytes"] > 0
    result = run.cli("status")
    assert result.returncode == 3 and "NOT RUNNING" in result.stdout


def test_unknown_handler_is_one_clear_line(tmp_path, dovecot):
    run = SupervisorRun(tmp_path, dovecot, [], handler={"target": "no.such.module:fn"})
    result = run.cli("run", timeout=20)
    assert result.returncode == 2
    assert "no.such.module" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_mail_announced_outside_idle_is_not_missed(dovecot, tmp_path):
    """Mail that arrives after a round's SEARCH is announced by an untagged EXISTS at the end of
    a later FETCH, not in IDLE (imaplib files it away). It must start another round at once,
    not wait for the next reconcile."""
    dovecot.add_user("acme", "acme-pw")
    handler = {"target": "tests.harness.handlers_for_tests:slow", "seconds": 0.4,
               "path": str(tmp_path / "emails.jsonl")}
    with SupervisorRun(tmp_path, dovecot, [TenantEntry("acme", "acme", "acme-pw")], handler=handler,
                       imap={"reconcile_interval": 600, "batch_size": 1}).start() as run:
        for i in range(4):  # one round of four, one FETCH each
            dovecot.deliver("acme", make_message(f"round {i}"))
        run.wait_emails(1, timeout=5)
        dovecot.deliver("acme", make_message("late"))  # after the round's SEARCH
        emails = run.wait_emails(5, timeout=8)
        assert [e["subject"] for e in emails][-1] == "late"
        assert len(unique_emails(emails)) == 5


def test_children_do_not_inherit_their_siblings_descriptors(dovecot, tmp_path):
    """No sibling pipe Connections or exit sentinels in a child (EOF must reach the parent when
    a child dies), while each child keeps its own sentinel's write end open until it exits.
    Nothing a child holds depends on how many siblings were forked before it."""
    tenants = []
    for i in range(6):
        dovecot.add_user(f"co{i}", f"co{i}-pw")
        tenants.append(TenantEntry(f"co{i}", f"co{i}", f"co{i}-pw"))
    with SupervisorRun(tmp_path, dovecot, tenants).start() as run:
        children = run.child_pids()
        counts = {tid: len(os.listdir(f"/proc/{pid}/fd")) for tid, pid in children.items()}
        assert len(set(counts.values())) == 1, counts
        # The one pipe every child reads: the shared shutdown pipe, whose write end only the
        # parent holds (else closing it would never read as EOF).
        shutdown = [_pipe_ends(pid, "read") for pid in children.values()]
        assert all(len(ends) == 1 for ends in shutdown) and len(set().union(*shutdown)) == 1, \
            "sibling sentinels inherited"
        shutdown_pipe = shutdown[0]
        assert shutdown_pipe <= _pipe_ends(run.proc.pid, "write")
        for pid in children.values():
            assert len(_pipe_ends(pid, "write")) == 1, "only its own exit sentinel"
            assert not shutdown_pipe & _pipe_ends(pid, "write"), "a child holds the shutdown pipe's write end"
        parent_sentinels = _pipe_ends(run.proc.pid, "read") - shutdown_pipe
        writers = set().union(*(_pipe_ends(pid, "write") for pid in children.values()))
        assert parent_sentinels and parent_sentinels <= writers, "a sentinel would read EOF early"
        time.sleep(1)
        assert all(psutil.Process(pid).is_running() for pid in children.values())
        assert len(run.child_pids()) == 6 and all(t["restarts"] == 0 for t in run.status()["tenants"].values())


def _pipe_ends(pid: int, end: str) -> set[str]:
    """Pipe inodes pid holds open for reading or for writing."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            flags = int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError):
            continue
        if target.startswith("pipe:") and int(fd) > 2 and ((flags & 3) == 0) == (end == "read"):
            found.add(target)
    return found
