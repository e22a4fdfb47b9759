#!/usr/bin/env python3
"""Start and stop: `run` to every tenant idle, then SIGTERM to every tenant logged out and reaped.

"Idle" is read from each child's process title ("Company 0001 [idle] ..."), polled every 50 ms.
Baseline (same run): N bare processes forked at once (no stagger) to TLS, login, EXAMINE, IDLE;
then SIGTERM to all, each DONE + LOGOUT, all reaped.
"""
from __future__ import annotations

import signal
import time

from common import Bench, fork_bare_idlers, stop_bare, target, tenant_children, wait_all

# Issue 14 item 4: the product against the bare all-at-once baseline of the same run.
START_LIMIT_X = 1.25
STOP_LIMIT_X = 1.1


def main() -> None:
    with Bench("startstop", __doc__) as b:
        n = 100 if b.quick else 1000
        b.limit(150 if b.quick else 400)
        dc = b.dovecot(n)

        sup = b.supervisor(dc, n)
        b.log(f"supervisor: start {n} tenants")
        t0 = time.monotonic()
        sup.start(wait_running=False)
        t_idle = wait_all(sup, n, ("idle",), timeout=120, interval=0.05)
        start_s = t_idle - t0
        time.sleep(2)
        pids = [p.pid for p in tenant_children(sup.proc.pid)]
        b.log(f"all idle after {start_s:.2f}s; SIGTERM")
        t1 = time.monotonic()
        sup.signal(signal.SIGTERM)
        code = sup.proc.wait(60)
        stop_s = time.monotonic() - t1
        logged_out = sup.log_text().count("] logged out")
        sessions = len(dc.who())

        b.log(f"baseline: {n} bare processes at once")
        t2 = time.monotonic()
        bare, wait_ready = fork_bare_idlers(b, dc, list(range(n)))
        ready = wait_ready(120)
        base_start = time.monotonic() - t2
        time.sleep(2)
        base_stop, clean = stop_bare(bare, 60)

        b.emit({
            "tenants": n, "start_s": round(start_s, 2), "stop_s": round(stop_s, 2),
            "supervisor_exit_code": code, "children": len(pids), "logged_out": logged_out,
            "imap_sessions_after_stop": sessions,
            "baseline_start_s": round(base_start, 2), "baseline_ready": ready,
            "baseline_stop_s": round(base_stop, 2), "baseline_clean_exits": clean,
        }, [target(f"start: {n} tenants from run to all idle", round(start_s, 2), "s",
                   round(START_LIMIT_X * base_start, 2), f"{base_start:.2f} s (bare, all at once)",
                   ok=start_s <= START_LIMIT_X * base_start and ready == n,
                   baseline_value=round(base_start, 2), note=f"target ≤ {START_LIMIT_X} × bare"),
            target(f"stop: SIGTERM to {n} logged out and reaped", round(stop_s, 2), "s",
                   round(STOP_LIMIT_X * base_stop, 2), f"{base_stop:.2f} s (bare)",
                   ok=stop_s <= STOP_LIMIT_X * base_stop and code == 0 and logged_out == n,
                   baseline_value=round(base_stop, 2),
                   note=f"target ≤ {STOP_LIMIT_X} × bare; {logged_out}/{n} logged out, exit {code}, "
                        f"{sessions} sessions left")])


if __name__ == "__main__":
    main()
