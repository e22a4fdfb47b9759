#!/usr/bin/env python3
"""Reaction: N tenants get one email each at the same moment; how fast is each handled?

Overhead = handler called minus the moment the tenant read the server's EXISTS (email.detected_at,
set by the tenant right after reading it). Full = handler called minus the start of the APPEND.
Baseline (same run): one bare imapclient IDLE loop in one process, no supervisor, doing the same
DONE + UID SEARCH + FETCH + parse after each EXISTS. Polling tenants: bench/polling.py.
"""
from __future__ import annotations

import email
import email.policy
import imaplib
import json
import os
import threading
import time

from common import Bench, bare_connect, median, password, pct, target, user, wait_all
from tests.dovecot import make_message


def appender(dc, i: int) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(dc.host, dc.imap_port, timeout=30)
    imap.login(user(i), password(i))
    return imap


def append_all(conns: list[tuple[int, imaplib.IMAP4]], tag: str) -> dict[int, float]:
    """APPEND one email to every mailbox at once (one thread each); returns start times."""
    barrier = threading.Barrier(len(conns))
    started: dict[int, float] = {}

    def one(i: int, imap: imaplib.IMAP4) -> None:
        msg = make_message(f"{tag} {i}")
        barrier.wait(30)
        started[i] = time.time()
        typ, _ = imap.append("INBOX", None, None, msg)
        assert typ == "OK"

    threads = [threading.Thread(target=one, args=c) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return started


def read_stamps(path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def wait_stamps(path, count: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamps = read_stamps(path)
        if len(stamps) >= count:
            return stamps
        time.sleep(0.05)
    raise RuntimeError(f"only {len(read_stamps(path))}/{count} emails handled after {timeout}s")


def bare_baseline(dc, i: int, rounds: int) -> tuple[list[float], list[float]]:
    """One process, one connection: IDLE, EXISTS -> DONE, SEARCH, FETCH, parse, 'handler'."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            client = bare_connect(dc, i)
            last = max(client.search(["ALL"]) or [0])
            for _ in range(rounds):
                client.idle()
                os.write(w, b"i")  # idling: the parent may append now
                while True:
                    resp = client.idle_check(timeout=10)
                    if any(x[1] == b"EXISTS" for x in resp if isinstance(x, tuple) and len(x) > 1):
                        break
                detected = time.time()
                client.idle_done()
                uids = [u for u in client.search(["UID", f"{last + 1}:*"]) if u > last]
                data = client.fetch(uids, ["BODY.PEEK[]", "INTERNALDATE", "RFC822.SIZE"])
                for uid in uids:
                    email.message_from_bytes(data[uid][b"BODY[]"], policy=email.policy.default)
                    called = time.time()
                    os.write(w, json.dumps({"d": detected, "c": called}).encode().ljust(100) + b"\n")
                last = max(uids)
            client.logout()
        finally:
            os._exit(0)
    os.close(w)
    reader = os.fdopen(r, "rb")
    imap = appender(dc, i)
    overhead, full = [], []
    try:
        for _ in range(rounds):
            assert reader.read(1) == b"i"
            time.sleep(0.05)
            t = time.time()
            imap.append("INBOX", None, None, make_message("baseline"))
            rec = json.loads(reader.read(101))
            overhead.append(rec["c"] - rec["d"])
            full.append(rec["c"] - t)
    finally:
        imap.logout()
        os.waitpid(pid, 0)
    return overhead, full


def main() -> None:
    with Bench("reaction", __doc__) as b:
        n = 100
        rounds = 3 if b.quick else 10
        base_rounds = 6 if b.quick else 40
        b.limit(120 if b.quick else 400)
        dc = b.dovecot(n + 1)

        b.log(f"baseline: bare IDLE loop, {base_rounds} emails")
        base_over, base_full = bare_baseline(dc, n, base_rounds)

        stamps = b.workdir / "stamps.jsonl"
        sup = b.supervisor(dc, n, handler={"target": "bench.handlers:stamp", "path": str(stamps)})
        sup.start(wait_running=False)
        wait_all(sup, n, ("idle",), timeout=90)
        time.sleep(1)
        conns = [(i, appender(dc, i)) for i in range(n)]
        over, full = [], []
        for r in range(rounds):
            b.log(f"round {r + 1}/{rounds}: {n} emails at once")
            before = len(read_stamps(stamps))
            started = append_all(conns, f"round {r}")
            got = wait_stamps(stamps, before + n, 30)[before:]
            for s in got:
                i = int(s["tenant_id"][1:])
                over.append(s["called_at"] - s["detected_at"])
                full.append(s["called_at"] - started[i])
            time.sleep(0.5)
        # Like for like with the bare baseline: one mailbox gets one email at a time (the other
        # tenants idle), so what is measured is the product's own path, not 2-core queueing.
        single = []
        b.log(f"one at a time: {base_rounds} emails, one mailbox each")
        for k in range(base_rounds):
            i, imap = conns[k % n]
            before = len(read_stamps(stamps))
            typ, _ = imap.append("INBOX", None, None, make_message(f"single {k}"))
            assert typ == "OK"
            (s,) = wait_stamps(stamps, before + 1, 30)[before:]
            single.append(s["called_at"] - s["detected_at"])
            time.sleep(0.05)
        for _, imap in conns:
            imap.logout()
        sup.stop(timeout=30)

        ms = lambda xs: round(1000 * xs, 1)  # noqa: E731
        med, p99 = median(over), pct(over, 99)
        b.emit({
            "tenants": n, "emails": len(over),
            "overhead_ms": {"median": ms(med), "p99": ms(p99), "max": ms(max(over))},
            "append_to_handler_ms": {"median": ms(median(full)), "p99": ms(pct(full, 99))},
            "one_at_a_time_overhead_ms": {"median": ms(median(single)), "p99": ms(pct(single, 99)),
                                          "n": len(single)},
            "baseline_overhead_ms": {"median": ms(median(base_over)), "p99": ms(pct(base_over, 99)),
                                     "n": len(base_over)},
            "baseline_append_to_handler_ms": {"median": ms(median(base_full))},
        }, [target(f"reaction overhead, EXISTS read -> handler called, median ({n} tenants at once)",
                   ms(med), "ms", 10.0, f"{ms(median(base_over))} ms (bare loop, 1 mailbox)"),
            target("reaction overhead p99", ms(p99), "ms", 50.0, f"{ms(pct(base_over, 99))} ms (bare)"),
            target("reaction overhead, one mailbox at a time (like the baseline), median",
                   ms(median(single)), "ms", 10.0, f"{ms(median(base_over))} ms (bare loop, 1 mailbox)"),
            target("reaction overhead, one mailbox at a time, p99", ms(pct(single, 99)), "ms", 50.0,
                   f"{ms(pct(base_over, 99))} ms (bare)"),
            target("APPEND -> handler called, median (info)", ms(median(full)), "ms", float("inf"),
                   f"{ms(median(base_full))} ms (bare)", ok=True,
                   note="Dovecot delays IDLE notifications by 0.5 s")])


if __name__ == "__main__":
    main()
