"""Polling tenants (servers without IDLE) poll in phases of their own (issue 14 item 7).

Tenants started together used to poll in the same second forever: one storm for the server and
the same delay for every mailbox. Pure tests of the schedule, then the real supervisor on the
test Dovecot's no-IDLE address.
"""
from __future__ import annotations

import random
import time

import pytest

from tenant_proc.session.timing import first_poll_at, next_poll_at
from tests.harness.supervisor_run import SupervisorRun, TenantEntry
from tests.servers.imap.mail_helpers import make_message


def test_first_poll_is_uniform_inside_the_interval():
    rng = random.Random(7)
    phases = [first_poll_at(100.0, 60.0, rng) - 100.0 for _ in range(2000)]
    assert all(0.0 <= p <= 60.0 for p in phases)
    # Uniform: each sixth of the interval holds about a sixth of the phases.
    for k in range(6):
        share = sum(10 * k <= p < 10 * (k + 1) for p in phases) / len(phases)
        assert 0.12 < share < 0.22, (k, share)


def test_next_poll_keeps_the_phase_and_never_polls_back_to_back():
    assert next_poll_at(previous=17.0, now=17.3, interval=60.0) == 77.0  # fixed rate
    assert next_poll_at(previous=17.0, now=90.0, interval=60.0) == 150.0  # a slow poll: a whole interval


@pytest.mark.integration
def test_pollers_started_together_poll_at_different_moments(dovecot, tmp_path):
    interval = 4.0
    users = {f"poller{i}": f"pw{i}" for i in range(8)}
    dovecot.add_users(users)
    tenants = [TenantEntry(f"p{i}", user, pw, host="127.0.0.2")
               for i, (user, pw) in enumerate(users.items())]
    with SupervisorRun(tmp_path, dovecot, tenants, imap={"poll_interval": interval}).start() as run:
        assert {t["mode"] for t in run.status()["tenants"].values()} == {"poll"}
        time.sleep(interval)  # past every first poll: what follows is the steady phase
        sent = time.time()
        for user in users:
            dovecot.deliver(user, make_message(f"to {user}"))
        emails = run.wait_emails(len(users), timeout=3 * interval)
        delays = sorted(e["handled_at"] - sent for e in emails)
        # Each within one interval (plus slack for a loaded machine) ...
        assert delays[-1] < interval + 2.0, delays
        # ... and not all in the same second: with eight uniform phases in 4 s, all of them
        # inside one second happens about once in 20,000 runs.
        assert delays[-1] - delays[0] > 1.0, delays
