#!/usr/bin/env python3
"""Memory: USS per tenant process at N idle tenants, the parent's RSS, total PSS.

Baseline (same run): the design notes' floor, bare children forked from a parent that imported
everything and called gc.freeze(), each holding one TLS IDLE connection and nothing else.
"""
from __future__ import annotations

import time

from common import Bench, fork_bare_idlers, median, pct, stop_bare, target, tenant_children, wait_all

import psutil

MB = 2**20


def main() -> None:
    with Bench("memory", __doc__) as b:
        n = 100 if b.quick else 1000
        n_bare = 20 if b.quick else 50
        b.limit(90 if b.quick else 300)
        dc = b.dovecot(n + n_bare)

        b.log(f"baseline: {n_bare} bare TLS IDLE children")
        pids, wait_ready = fork_bare_idlers(b, dc, list(range(n, n + n_bare)))
        if wait_ready(60) < n_bare:
            raise RuntimeError("bare children did not all reach IDLE")
        time.sleep(1)
        bare_uss = [psutil.Process(p).memory_full_info().uss / MB for p in pids]
        stop_bare(pids, 10)

        b.log(f"supervisor with {n} tenants")
        sup = b.supervisor(dc, n)
        sup.start(wait_running=False)
        wait_all(sup, n, ("idle",), timeout=120)
        time.sleep(3)  # let every child settle after its first IDLE
        parent = psutil.Process(sup.proc.pid)
        children = tenant_children(sup.proc.pid)
        uss, pss = [], 0
        for p in children:
            info = p.memory_full_info()
            uss.append(info.uss / MB)
            pss += info.pss
        pinfo = parent.memory_full_info()
        pss += pinfo.pss
        sup.stop(timeout=30)

        med, p99, worst = median(uss), pct(uss, 99), max(uss)
        base = median(bare_uss)
        b.emit({
            "tenants": len(children),
            "uss_mb": {"median": round(med, 2), "p99": round(p99, 2), "max": round(worst, 2)},
            "baseline_bare_uss_mb": {"median": round(base, 2), "max": round(max(bare_uss), 2),
                                     "n": n_bare},
            "parent_rss_mb": round(pinfo.rss / MB, 1), "parent_uss_mb": round(pinfo.uss / MB, 1),
            "total_pss_mb": round(pss / MB, 1),
            "ratio_to_baseline": round(med / base, 2),
        }, [target(f"USS per tenant process at {n} tenants (median; max {worst:.2f})", round(med, 2),
                   "MB", 5.0, f"{base:.2f} MB bare child", ok=worst < 5.0 if not b.quick else med < 5.0),
            target(f"parent RSS / total PSS at {n} tenants", round(pinfo.rss / MB, 1), "MB",
                   float("inf"), f"total PSS {pss / MB:.0f} MB", ok=True)])


if __name__ == "__main__":
    main()
