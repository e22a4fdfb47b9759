#!/usr/bin/env python3
"""Reaction: N tenants get one email each at the same moment; how fast is each handled?

Overhead = handler called minus the moment the tenant read the server's EXISTS (email.detected_at,
set by the tenant right after reading it). Full = handler called minus the start of the APPEND.
Baselines (same run): the fair one, N bare single-connection processes (no supervisor, no
ledger) doing DONE + UID SEARCH + FETCH + the product's parser after each EXISTS, getting their
N emails in the same instant; and one such bare loop on one mailbox, for one at a time. Polling tenants: bench/polling.py.
"""
from __future__ import annotations

import imaplib
import json
import os
import threading
import time

from common import (Bench, bare_connect, fork_child, kill_and_reap, median, password, pct, target,
                    user, wait_all)
from tenant_proc.message import Envelope, parse_email
from tests.servers.imap.mail_helpers import make_message


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


def bare_processes(b: Bench, dc, indexes: list[int], rounds: int) -> tuple[list[float], list[float]]:
    """One bare process per index, one connection each, no supervisor and no ledger: IDLE,
    EXISTS -> DONE, UID SEARCH, FETCH, the product's parser, 'handler'. Every round, all of
    them get an email in the same instant (one APPEND thread each), as the product does.
    Returns (overhead: handler called - EXISTS read, full: handler called - APPEND start)."""
    r, w = os.pipe()
    pids = [fork_child(b, lambda i=i: _bare_loop(dc, i, rounds, w), close_in_child=(r,),
                       limit=BARE_CHILD_LIMIT, label=f"bare process {i}")
            for i in indexes]
    os.close(w)
    reader = os.fdopen(r, "rb")
    conns = [(i, appender(dc, i)) for i in indexes]
    overhead, full = [], []
    try:
        for k in range(rounds):
            _read_records(reader, "ready", len(indexes))  # all idling: append now
            time.sleep(0.05)
            started = append_all(conns, f"bare {k}")
            for rec in _read_records(reader, "handled", len(indexes)):
                overhead.append(rec["c"] - rec["d"])
                full.append(rec["c"] - started[rec["i"]])
    finally:
        for _, imap in conns:
            imap.logout()
        kill_and_reap(pids)
    return overhead, full


# Every message of a bare child is one fixed-size line (below PIPE_BUF: writers never interleave),
# so a fast child's "ready" for the next round cannot be mistaken for a slow one's result.
RECORD = 128
BARE_CHILD_LIMIT = 300


def _record(w: int, **fields: object) -> None:
    os.write(w, json.dumps(fields).encode().ljust(RECORD - 1) + b"\n")


def _read_records(reader, kind: str, count: int) -> list[dict]:
    """The next count records; each child's records arrive in order, so no kind can be
    early except a child's next "ready" after its own "handled", which is kept for later."""
    found = [rec for rec in _EARLY if rec["k"] == kind][:count]
    for rec in found:
        _EARLY.remove(rec)
    while len(found) < count:
        data = reader.read(RECORD)
        if len(data) < RECORD:
            raise RuntimeError(f"a bare process died: {len(found)}/{count} {kind} records")
        rec = json.loads(data)
        if rec["k"] == kind:
            found.append(rec)
        else:
            _EARLY.append(rec)
    return found


_EARLY: list[dict] = []




def _bare_loop(dc, i: int, rounds: int, w: int) -> None:
    client = bare_connect(dc, i)
    last = max(client.search(["ALL"]) or [0])
    for _ in range(rounds):
        client.idle()
        _record(w, k="ready", i=i)
        deadline = time.monotonic() + 60
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError("no EXISTS within 60 s")
            resp = client.idle_check(timeout=10)
            if any(x[1] == b"EXISTS" for x in resp if isinstance(x, tuple) and len(x) > 1):
                break
        detected = time.time()
        client.idle_done()
        uids = [u for u in client.search(["UID", f"{last + 1}:*"]) if u > last]
        data = client.fetch(uids, ["BODY.PEEK[]", "INTERNALDATE", "RFC822.SIZE"])
        for uid in uids:
            parse_email(data[uid][b"BODY[]"], Envelope("bare", "INBOX", uid, 1, 0, 0.0, detected))
            _record(w, k="handled", i=i, d=detected, c=time.time())
        last = max(uids)
    client.logout()


def main() -> None:
    with Bench("reaction", __doc__) as b:
        n = 100
        rounds = 3 if b.quick else 10
        base_rounds = 6 if b.quick else 40
        b.limit(120 if b.quick else 400)
        dc = b.dovecot(n + 1)

        b.log(f"baseline: bare IDLE loop, {base_rounds} emails")
        base_over, base_full = bare_processes(b, dc, [n], base_rounds)
        b.log(f"fair baseline: {n} bare processes, {rounds} x {n} emails at once")
        bare_over, _ = bare_processes(b, dc, list(range(n)), rounds)

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
        med, p99 = ms(median(over)), ms(pct(over, 99))
        bare_med, bare_p99 = ms(median(bare_over)), ms(pct(bare_over, 99))
        one_med, one_p99 = ms(median(single)), ms(pct(single, 99))
        base_med, base_p99 = ms(median(base_over)), ms(pct(base_over, 99))
        b.emit({
            "tenants": n, "emails": len(over),
            "overhead_ms": {"median": med, "p99": p99, "max": ms(max(over))},
            "append_to_handler_ms": {"median": ms(median(full)), "p99": ms(pct(full, 99))},
            "bare_at_once_overhead_ms": {"median": bare_med, "p99": bare_p99, "n": len(bare_over)},
            "one_at_a_time_overhead_ms": {"median": one_med, "p99": one_p99, "n": len(single)},
            "baseline_overhead_ms": {"median": base_med, "p99": base_p99, "n": len(base_over)},
            "baseline_append_to_handler_ms": {"median": ms(median(base_full))},
        }, [target(f"reaction overhead, EXISTS read -> handler called, median ({n} tenants at once)",
                   med, "ms", round(1.25 * bare_med, 1), f"{bare_med} ms ({n} bare processes at once)",
                   baseline_value=bare_med, note="target ≤ 1.25 × bare"),
            target(f"reaction overhead p99 ({n} at once)", p99, "ms", round(1.25 * bare_p99, 1),
                   f"{bare_p99} ms ({n} bare processes at once)", baseline_value=bare_p99,
                   note="target ≤ 1.25 × bare"),
            target("reaction overhead, one mailbox at a time, median", one_med, "ms",
                   round(base_med + 1.0, 1), f"{base_med} ms (bare loop, 1 mailbox)",
                   baseline_value=base_med, note="target ≤ bare + 1 ms"),
            target("reaction overhead, one mailbox at a time, p99", one_p99, "ms",
                   round(base_p99 + 1.0, 1), f"{base_p99} ms (bare)", baseline_value=base_p99,
                   note="target ≤ bare + 1 ms"),
            target("APPEND -> handler called, median (info)", ms(median(full)), "ms", float("inf"),
                   f"{ms(median(base_full))} ms (bare)", ok=True,
                   note="Dovecot delays IDLE notifications by 0.5 s")])


if __name__ == "__main__":
    main()
