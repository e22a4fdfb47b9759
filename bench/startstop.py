#!/usr/bin/env python3
"""Start and stop: `run` to every tenant idle, then SIGTERM to every tenant logged out and reaped.

"Idle" is read from each child's process title ("Company 0001 [idle] ..."), polled every 50 ms.
Baseline (same run): N bare processes forked at once (no stagger) to TLS, login, EXAMINE, IDLE;
then SIGTERM to all, each DONE + LOGOUT, all reaped.

Fair order: a mailbox's first login on a fresh Dovecot creates its index files, and the first
round of N logins took ~1.4 x as long as the next ones (300 bare processes: 5.8-6.6 s, then
4.1-4.6 s). So every mailbox is logged in once first (the warm-up, reported as information),
then the product and the baseline are measured ROUNDS times in alternating order, and their
medians are compared.
"""
from __future__ import annotations

import signal
import statistics
import time

from common import Bench, fork_bare_idlers, stop_bare, target, tenant_children, wait_all

# Issue 14 item 4: the product against the bare all-at-once baseline of the same run.
START_LIMIT_X = 1.25
STOP_LIMIT_X = 1.1
ROUNDS = 2  # product, bare; then bare, product


def measure_product(b: Bench, dc, n: int, name: str) -> dict:
    sup = b.supervisor(dc, n, name=name)
    t0 = time.monotonic()
    sup.start(wait_running=False)
    t_idle = wait_all(sup, n, ("idle",), timeout=120, interval=0.05)
    start_s = t_idle - t0
    time.sleep(2)
    pids = [p.pid for p in tenant_children(sup.proc.pid)]
    t1 = time.monotonic()
    sup.signal(signal.SIGTERM)
    code = sup.proc.wait(60)
    stop_s = time.monotonic() - t1
    return {"start_s": round(start_s, 2), "stop_s": round(stop_s, 2), "exit_code": code,
            "children": len(pids), "logged_out": sup.log_text().count("] logged out"),
            "sessions_after_stop": len(dc.who())}


def measure_bare(b: Bench, dc, n: int) -> dict:
    t0 = time.monotonic()
    bare, wait_ready = fork_bare_idlers(b, dc, list(range(n)))
    ready = wait_ready(120)
    start_s = time.monotonic() - t0
    time.sleep(2)
    stop_s, clean = stop_bare(bare, 60)
    return {"start_s": round(start_s, 2), "stop_s": round(stop_s, 2), "ready": ready, "clean_exits": clean}


def main() -> None:
    with Bench("startstop", __doc__) as b:
        n = 100 if b.quick else 1000
        b.limit(300 if b.quick else 600)
        dc = b.dovecot(n)
        warm = measure_bare(b, dc, n)  # every mailbox's first login: index files created here
        b.log(f"warm-up: {n} first logins in {warm['start_s']:.2f}s")
        products: list[dict] = []
        bares: list[dict] = []
        for r in range(ROUNDS):
            for what in (("product", "bare") if r % 2 == 0 else ("bare", "product")):
                if what == "product":
                    products.append(measure_product(b, dc, n, f"sup{r}"))
                else:
                    bares.append(measure_bare(b, dc, n))
                b.log(f"round {r + 1} {what}: {(products if what == 'product' else bares)[-1]}")

        def med(rows: list[dict], key: str) -> float:
            return round(statistics.median(row[key] for row in rows), 2)

        start_s, stop_s = med(products, "start_s"), med(products, "stop_s")
        base_start, base_stop = med(bares, "start_s"), med(bares, "stop_s")
        code = max(p["exit_code"] for p in products)
        logged_out = min(p["logged_out"] for p in products)
        sessions = max(p["sessions_after_stop"] for p in products)
        ready = min(x["ready"] for x in bares)
        b.emit({
            "tenants": n, "rounds": ROUNDS, "start_s": start_s, "stop_s": stop_s,
            "supervisor_exit_code": code, "logged_out": logged_out, "imap_sessions_after_stop": sessions,
            "baseline_start_s": base_start, "baseline_stop_s": base_stop, "baseline_ready": ready,
            "warmup_first_logins_s": warm["start_s"], "product_rounds": products, "baseline_rounds": bares,
        }, [target(f"start: {n} tenants from run to all idle (median of {ROUNDS})", start_s, "s",
                   round(START_LIMIT_X * base_start, 2), f"{base_start:.2f} s (bare, all at once)",
                   ok=start_s <= START_LIMIT_X * base_start and ready == n,
                   baseline_value=base_start,
                   note=f"target ≤ {START_LIMIT_X} × bare; every mailbox logged in once before "
                        f"(first logins: {warm['start_s']:.1f} s); rounds alternate product/bare"),
            target(f"stop: SIGTERM to {n} logged out and reaped (median of {ROUNDS})", stop_s, "s",
                   round(STOP_LIMIT_X * base_stop, 2), f"{base_stop:.2f} s (bare)",
                   ok=stop_s <= STOP_LIMIT_X * base_stop and code == 0 and logged_out == n,
                   baseline_value=base_stop,
                   note=f"target ≤ {STOP_LIMIT_X} × bare; {logged_out}/{n} logged out in every round, "
                        f"exit {code}, {sessions} sessions left")])


if __name__ == "__main__":
    main()
