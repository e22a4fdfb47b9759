#!/usr/bin/env python3
"""Polling: tenants on a server without IDLE; emails arrive spread uniformly over time.

20 tenants behind the test Dovecot's address that hides IDLE, started together. Each round,
every tenant gets one email at a moment drawn uniformly from the poll interval (APPEND on the
plain port), and the delay APPEND -> handler called is recorded. With a phase of their own per
tenant the delay is uniform over the interval: median interval / 2, max interval (+ the small
cost of one poll). Baseline: that expectation, and the spread of the tenants' poll moments
(tenants polling in phase all answer within the same second).
"""
from __future__ import annotations

import imaplib
import random
import time

from common import Bench, median, password, pct, target, user, wait_all
from reaction import read_stamps, wait_stamps
from tests.harness.supervisor_run import TenantEntry
from tests.servers.imap.mail_helpers import make_message

N_TENANTS = 20


def main() -> None:
    with Bench("polling", __doc__) as b:
        interval = 4.0 if b.quick else 60.0
        rounds = 5 if b.quick else 2
        b.limit(90 if b.quick else 420)
        rng = random.Random(2026)
        dc = b.dovecot(N_TENANTS)
        stamps = b.workdir / "stamps.jsonl"
        tenants = [TenantEntry(id=f"p{i:04d}", name=f"Poller {i:04d}", user=user(i),
                               password=password(i), host="127.0.0.2") for i in range(N_TENANTS)]
        sup = b.supervisor(dc, 0, imap={"poll_interval": interval}, extra=tenants,
                           handler={"target": "bench.handlers:stamp", "path": str(stamps)})
        sup.start(wait_running=False)
        wait_all(sup, N_TENANTS, ("polling",), timeout=90)
        time.sleep(interval)  # past every tenant's first poll: measure the steady phase
        conns = []
        for i in range(N_TENANTS):
            imap = imaplib.IMAP4(dc.host, dc.imap_port, timeout=30)
            imap.login(user(i), password(i))
            conns.append(imap)
        delays: list[float] = []
        spreads: list[float] = []
        for r in range(rounds):
            b.log(f"round {r + 1}/{rounds}: {N_TENANTS} emails spread over {interval:g}s")
            before = len(read_stamps(stamps))
            start = time.time()
            plan = sorted((rng.uniform(0, interval), i) for i in range(N_TENANTS))
            sent: dict[int, float] = {}
            for offset, i in plan:
                time.sleep(max(0.0, start + offset - time.time()))
                sent[i] = time.time()
                typ, _ = conns[i].append("INBOX", None, None, make_message(f"poll {r} {i}"))
                assert typ == "OK"
            got = wait_stamps(stamps, before + N_TENANTS, interval * 2 + 15)[before:]
            round_delays = [s["called_at"] - sent[int(s["tenant_id"][1:])] for s in got]
            delays += round_delays
            # When each tenant polled, relative to the interval: in phase, these all coincide.
            phases = sorted((s["called_at"] - start) % interval for s in got)
            spreads.append(max(b2 - a for a, b2 in zip([phases[-1] - interval] + phases, phases)))
        for imap in conns:
            imap.logout()
        sup.stop(timeout=30)

        med, worst = median(delays), max(delays)
        # Largest gap between neighbouring poll phases on the circle: one storm leaves a gap of
        # nearly the whole interval; 20 uniform phases leave about interval * ln(20) / 20.
        gap = median(spreads)
        b.emit({
            "tenants": N_TENANTS, "interval_s": interval, "emails": len(delays),
            "append_to_handler_s": {"median": round(med, 2), "p90": round(pct(delays, 90), 2),
                                    "max": round(worst, 2)},
            "largest_phase_gap_s": round(gap, 2),
        }, [target(f"polling every {interval:g}s, arrivals spread: APPEND -> handler, median",
                   round(med, 2), "s", interval / 2 * 1.3,
                   f"{interval / 2:g} s (uniform phase, uniform arrivals)",
                   ok=interval / 2 * 0.7 <= med <= interval / 2 * 1.3, baseline_value=interval / 2,
                   note="within ±30 % of interval / 2"),
            target("polling: APPEND -> handler, max", round(worst, 2), "s", interval + 1.0,
                   f"{interval:g} s (one interval)", baseline_value=interval,
                   note=f"largest gap between poll phases {gap:.2f}s of {interval:g}s")])


if __name__ == "__main__":
    main()
