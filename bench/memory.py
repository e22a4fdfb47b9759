#!/usr/bin/env python3
"""Memory: USS per tenant process at two tenant counts, the parent's RSS, total PSS.

Baseline (same run): the design notes' floor, bare children forked from a parent that imported
everything and called gc.freeze(), each holding one TLS IDLE connection and nothing else.
Target: median USS at the larger count <= 4.5 MB, and no growth from the smaller count.
Information: one Python process holding every connection in its own thread (the price of
isolation): (RSS with N threads idling - RSS before them) / N.
"""
from __future__ import annotations

import json
import os
import threading
import time

from common import (Bench, bare_connect, fork_bare_idlers, fork_child, median, pct, stop_bare, target,
                    tenant_children, wait_all)

import psutil

MB = 2**20
LIMIT_MB = 4.5


def tenant_memory(b: Bench, dc, n: int, name: str) -> dict:
    """Start n tenants, wait until all idle and settled, read every process, stop them."""
    b.log(f"supervisor with {n} tenants")
    sup = b.supervisor(dc, n, name=name)
    sup.start(wait_running=False)
    wait_all(sup, n, ("idle",), timeout=180)
    time.sleep(3)  # let every child settle after its first IDLE
    parent = psutil.Process(sup.proc.pid)
    uss, pss = [], 0
    for p in tenant_children(sup.proc.pid):
        info = p.memory_full_info()
        uss.append(info.uss / MB)
        pss += info.pss
    pinfo = parent.memory_full_info()
    pss += pinfo.pss
    sup.stop(timeout=30)
    return {"tenants": len(uss), "median": median(uss), "p99": pct(uss, 99), "max": max(uss),
            "parent_rss": pinfo.rss / MB, "parent_uss": pinfo.uss / MB, "total_pss": pss / MB}


def thread_per_company(b: Bench, dc, first: int, n: int) -> dict:
    """A forked process (the same imports as the bare children) opens n TLS IDLE connections,
    one thread each; it reports its RSS before and after over a pipe, then exits."""
    read_fd, write_fd = os.pipe()

    def measure() -> None:
        rss0 = psutil.Process().memory_info().rss
        stop = threading.Event()
        idling = threading.Semaphore(0)

        def company(i: int) -> None:
            client = bare_connect(dc, i)
            client.idle()
            idling.release()
            while not stop.is_set():
                client.idle_check(timeout=1)
            client.idle_done()
            client.logout()

        threads = [threading.Thread(target=company, args=(i,), daemon=True)
                   for i in range(first, first + n)]
        for t in threads:
            t.start()
        for _ in threads:
            if not idling.acquire(timeout=120):
                raise RuntimeError("threads did not all reach IDLE")
        time.sleep(2)
        rss_n = psutil.Process().memory_info().rss
        os.write(write_fd, json.dumps({"rss0": rss0, "rss_n": rss_n}).encode())
        stop.set()
        for t in threads:
            t.join(10)

    pid = fork_child(b, measure, close_in_child=(read_fd,), label="thread-per-company process")
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("thread-per-company process failed")
    got = json.loads(data)
    return {"n": n, "rss0_mb": got["rss0"] / MB, "rss_n_mb": got["rss_n"] / MB,
            "per_connection_mb": (got["rss_n"] - got["rss0"]) / MB / n}


def main() -> None:
    with Bench("memory", __doc__) as b:
        n_small, n = (20, 100) if b.quick else (100, 1000)
        n_bare = 20 if b.quick else 50
        n_threads = 50 if b.quick else 200
        b.limit(150 if b.quick else 420)
        dc = b.dovecot(n + max(n_bare, n_threads))

        b.log(f"baseline: {n_bare} bare TLS IDLE children")
        pids, wait_ready = fork_bare_idlers(b, dc, list(range(n, n + n_bare)))
        if wait_ready(60) < n_bare:
            raise RuntimeError("bare children did not all reach IDLE")
        time.sleep(1)
        bare_uss = [psutil.Process(p).memory_full_info().uss / MB for p in pids]
        stop_bare(pids, 10)

        b.log(f"information: one process, {n_threads} threads each holding a TLS IDLE connection")
        threads = thread_per_company(b, dc, n, n_threads)

        small = tenant_memory(b, dc, n_small, "sup-small")
        large = tenant_memory(b, dc, n, "sup")

        base = median(bare_uss)
        med, worst = large["median"], large["max"]
        growth = med - small["median"]
        b.emit({
            "tenants": large["tenants"],
            "uss_mb": {"median": round(med, 2), "p99": round(large["p99"], 2), "max": round(worst, 2)},
            "uss_mb_at_small": {"tenants": small["tenants"], "median": round(small["median"], 2),
                                "max": round(small["max"], 2)},
            "baseline_bare_uss_mb": {"median": round(base, 2), "max": round(max(bare_uss), 2),
                                     "n": n_bare},
            "parent_rss_mb": round(large["parent_rss"], 1), "parent_uss_mb": round(large["parent_uss"], 1),
            "total_pss_mb": round(large["total_pss"], 1),
            "ratio_to_baseline": round(med / base, 2),
            "thread_per_company": {k: round(v, 3) if isinstance(v, float) else v for k, v in threads.items()},
        }, [target(f"USS per tenant process at {n} tenants (median; max {worst:.2f})", round(med, 2),
                   "MB", LIMIT_MB, f"{base:.2f} MB bare TLS IDLE child", ok=med <= LIMIT_MB,
                   baseline_value=round(base, 2), note=f"target ≤ {LIMIT_MB} MB"),
            target(f"USS growth per tenant process, {small['tenants']} -> {n} tenants (median)",
                   round(growth, 2), "MB", 0.1, f"{small['median']:.2f} MB at {small['tenants']} tenants",
                   ok=growth <= 0.1, note="no growth with the tenant count (≤ 0.1 MB noise)"),
            target(f"parent RSS / total PSS at {n} tenants", round(large["parent_rss"], 1), "MB",
                   float("inf"), f"total PSS {large['total_pss']:.0f} MB", ok=True),
            target(f"thread-per-company (info): one process, {n_threads} TLS IDLE threads, memory per "
                   "connection", round(threads["per_connection_mb"], 3), "MB", float("inf"),
                   f"{base:.2f} MB per isolated tenant process (bare)", ok=True,
                   note=f"(RSS at {n_threads} - RSS at 0) / {n_threads}; the price of isolation")])


if __name__ == "__main__":
    main()
