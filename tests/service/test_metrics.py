"""Prometheus endpoint served by the supervisor's own loop, scraped over real HTTP."""
from __future__ import annotations

import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from supervisor.service.metrics import LATENCY_BUCKETS, LatencyHistogram
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message
from tests.servers.ports import Reservation, reserve_port


def free_port() -> int:
    """A port the supervisor's metrics listener can bind, held by no other test meanwhile."""
    reservation = reserve_port()
    _HELD.append(reservation)  # until the test process ends
    return reservation.port


_HELD: list[Reservation] = []


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def sample(text: str, metric: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_histogram_buckets_are_cumulative():
    h = LatencyHistogram()
    for value in (0.0005, 0.003, 0.003, 20.0):
        h.observe(value)
    buckets = dict(h.cumulative())
    assert buckets["0.001"] == 1 and buckets["0.005"] == 3 and buckets["+Inf"] == 4
    assert len(buckets) == len(LATENCY_BUCKETS) + 1 and h.count == 4


@pytest.mark.integration
def test_metrics_endpoint_reports_tenants_counters_and_latency(dovecot, tmp_path):
    port = free_port()
    dovecot.add_user("acme", "acme-pw")
    dovecot.add_user("globex", "globex-pw")
    tenants = [TenantEntry("acme", "acme", "acme-pw", name="Acme AB"),
               TenantEntry("globex", "globex", "globex-pw", host="127.0.0.2")]  # polls
    with SupervisorRun(tmp_path, dovecot, tenants,
                       extra_sections={"metrics": {"listen": f"127.0.0.1:{port}"}}).start() as run:
        text = scrape(port)
        assert sample(text, "idle_supervisor_tenants", state="idle") == 1
        assert sample(text, "idle_supervisor_tenants", state="polling") == 1
        assert sample(text, "idle_supervisor_tenants", state="failed") == 0
        dovecot.deliver("acme", make_message("counted"))
        run.wait_emails(1)
        run.wait_for(lambda s: s["tenants"]["acme"]["processed"] == 1, 5, "heartbeat")
        text = scrape(port)
        assert sample(text, "idle_supervisor_emails_processed_total", tenant="acme", name="Acme AB") == 1
        assert sample(text, "idle_supervisor_emails_failed_total", tenant="acme") == 0
        assert sample(text, "idle_supervisor_restarts_total", tenant="acme") == 0
        assert sample(text, "idle_supervisor_handling_latency_seconds_count") == 1
        assert 0 < sample(text, "idle_supervisor_handling_latency_seconds_sum") < 5
        assert sample(text, "idle_supervisor_server_idle_seconds", tenant="acme") is not None
        with pytest.raises(urllib.error.HTTPError) as info:
            scrape(port, "/nope")
        assert info.value.code == 404
        # A silent client that never sends a request cannot wedge the loop for long.
        with socket.create_connection(("127.0.0.1", port)):
            dovecot.deliver("acme", make_message("still flowing"))
            run.wait_emails(2, timeout=10)
        # children never hold the listening socket: after the supervisor stops, the port is free
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_metrics_listen_errors_are_one_line(tmp_path, dovecot):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = SupervisorRun(tmp_path, dovecot, [], extra_sections={"metrics": {"listen": f"127.0.0.1:{port}"}})
        result = run.cli("run", timeout=20)
    assert result.returncode == 2 and "cannot listen" in result.stderr and "Traceback" not in result.stderr


def hold_silent_connections(port: int, count: int) -> list[socket.socket]:
    """Connections that send nothing, as any local account can open. Connected without
    blocking, so a listener that stops accepting cannot stall the test here instead."""
    held = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        held.append(sock)
    return held


@pytest.mark.integration
def test_fifty_silent_metrics_clients_never_hold_the_loop(dovecot, tmp_path):
    """Served blocking, 20 such connections held the loop for 20 s (no child message read, no
    signal handled); now mail is counted, SIGHUP handled, scrapes answered meanwhile."""
    port = free_port()
    dovecot.add_user("acme", "acme-pw")
    dovecot.add_user("globex", "globex-pw")
    tenants = [TenantEntry("acme", "acme", "acme-pw"), TenantEntry("globex", "globex", "globex-pw")]
    with SupervisorRun(tmp_path, dovecot, tenants,
                       extra_sections={"metrics": {"listen": f"127.0.0.1:{port}"}}).start() as run:
        pids = run.child_pids()
        silent = hold_silent_connections(port, 50)
        try:
            dovecot.deliver("acme", make_message("while fifty wait"))
            run.wait_emails(1, tenant="acme")
            # The loop reads the child's message: status.json counts it (the loop writes it)...
            run.wait_for(lambda s: s["tenants"]["acme"]["processed"] == 1, 5, "the loop counting mail")
            live = run.cli("status", "--json", timeout=15)  # ...and the control socket answers live
            assert '"source": "live"' in live.stdout and live.returncode == 0, live.stdout + live.stderr
            run.signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while "SIGHUP: reloading" not in run.log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "SIGHUP: reloading" in run.log_text()
            text = scrape(port)  # a real scrape gets through the crowd of silent ones
            assert sample(text, "idle_supervisor_emails_processed_total", tenant="acme") == 1
            dovecot.deliver("globex", make_message("still flowing"))
            run.wait_for(lambda s: s["tenants"]["globex"]["processed"] == 1, 5, "globex counted")
            status = run.status()["tenants"]
            assert run.child_pids() == pids  # no tenant killed as hung
            assert all(t["restarts"] == 0 and t["state"] == "idle" for t in status.values()), status
            # Every silent connection is closed by the supervisor: dropped to make room for a
            # newer one, or at its deadline.
            for sock in silent:
                sock.setblocking(True)
                sock.settimeout(15)
                try:
                    assert sock.recv(1024) == b""
                except ConnectionResetError:
                    pass
            assert run.proc.poll() is None
        finally:
            for sock in silent:
                sock.close()
