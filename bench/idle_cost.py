#!/usr/bin/env python3
"""Idle cost: CPU of the supervisor plus all its children while N tenants sit in IDLE.

CPU time on the CPU (/proc/PID/schedstat) deltas over the window, with the product defaults.
Baseline (same run): N bare forked imapclient processes idling on the same Dovecot.
"""
from __future__ import annotations

import time

import psutil

from common import Bench, cpu_seconds, fork_bare_idlers, stop_bare, target, tenant_children, wait_all

IDLE_LIMIT_PCT = 1.0  # issue 14 item 5: at 1,000 tenants over 5 minutes, product defaults


def main() -> None:
    with Bench("idle_cost", __doc__) as b:
        n = 100 if b.quick else 1000
        window = 30 if b.quick else 300
        base_window = 8 if b.quick else 120
        b.limit(150 if b.quick else 900)
        dc = b.dovecot(n)

        b.log(f"supervisor with {n} tenants, window {window}s")
        sup = b.supervisor(dc, n)
        sup.start(wait_running=False)
        wait_all(sup, n, ("idle",), timeout=120)
        time.sleep(2 if b.quick else 10)  # start-up work done; only idling from here
        procs = [psutil.Process(sup.proc.pid), *tenant_children(sup.proc.pid)]
        parent_before = cpu_seconds(procs[:1])[0]
        before, _ = cpu_seconds(procs)
        t0 = time.monotonic()
        time.sleep(window)
        after, alive = cpu_seconds(procs)
        elapsed = time.monotonic() - t0
        parent_after = cpu_seconds(procs[:1])[0]
        sup_pct = 100.0 * (after - before) / elapsed
        parent_pct = 100.0 * (parent_after - parent_before) / elapsed
        sup.stop(timeout=60)

        b.log(f"baseline: {n} bare idlers, window {base_window}s")
        pids, wait_ready = fork_bare_idlers(b, dc, list(range(n)))
        if wait_ready(120) < n:
            raise RuntimeError("bare idlers did not all reach IDLE")
        time.sleep(3)
        bprocs = [psutil.Process(p) for p in pids]
        bbefore, _ = cpu_seconds(bprocs)
        t1 = time.monotonic()
        time.sleep(base_window)
        bafter, _ = cpu_seconds(bprocs)
        base_pct = 100.0 * (bafter - bbefore) / (time.monotonic() - t1)
        stop_bare(pids, 30)

        b.emit({
            "tenants": n, "window_s": round(elapsed, 1), "alive_at_end": alive - 1,
            "cpu_pct_of_one_core": round(sup_pct, 3), "parent_pct": round(parent_pct, 3),
            "children_pct": round(sup_pct - parent_pct, 3),
            "baseline_bare_pct": round(base_pct, 3), "baseline_window_s": base_window,
        }, [target(f"idle CPU, {n} tenants over {window}s (supervisor + children)", round(sup_pct, 3),
                   "% of one core", IDLE_LIMIT_PCT, f"{base_pct:.3f} % ({n} bare idlers, {base_window}s)",
                   baseline_value=round(base_pct, 3),
                   note=f"parent {parent_pct:.3f} %, children {sup_pct - parent_pct:.3f} %; "
                        f"target ≤ {IDLE_LIMIT_PCT} % of one core")])


if __name__ == "__main__":
    main()
