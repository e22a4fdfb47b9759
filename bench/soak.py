#!/usr/bin/env python3
"""Soak: 200 tenants for 30 minutes (--quick: 5) with mail arriving throughout.

About 2 emails/s in total go to random mailboxes (IMAP APPEND on the plain port); every minute
one random user's sessions are ended with `doveadm kick` (the tenant reconnects in-process) and
every 100 s one random tenant process is SIGKILLed (the supervisor restarts it after its
backoff). Every 15 s: each tenant process's USS and open fds, the parent's RSS and open fds.
At the end every sent Message-ID must have been handled exactly once (jsonl handler).
Warm-up first: every tenant handles one email (its first email copies ~0.7 MB of shared pages
into it: parser, handler, ledger code paths; that is a one-time cost, not growth). Targets:
per-tenant USS growth <= 0.3 MB (each process that lived through the whole soak, compared with
its own first sample after the warm-up), parent RSS growth <= 5 MB, fds of the parent (less two
per live child) and of each child constant, zero lost, zero duplicated. A PNG of USS and fds
over time lands next to RESULTS.md when matplotlib is installed (bench/requirements.txt).
"""
from __future__ import annotations

import imaplib
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from common import Bench, child_pids, median, password, pct, target, user, wait_all
from tests.servers.imap.mail_helpers import make_message

MB = 2**20
SAMPLE_EVERY = 15.0
RATE = 2.0  # emails per second, all tenants together
KICK_EVERY = 60.0
CRASH_EVERY = 100.0
HERE = Path(__file__).resolve().parent


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Mailer(threading.Thread):
    """APPENDs at RATE per second to random mailboxes until stopped; records what it sent."""

    def __init__(self, dc, n: int, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.dc, self.n, self.rng = dc, n, rng
        self.sent: list[str] = []
        self.errors = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        conns: dict[int, imaplib.IMAP4] = {}
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            i = self.rng.randrange(self.n)
            msgid = f"<soak-{len(self.sent)}-{i}@bench.example>"
            try:
                if i not in conns:
                    conns[i] = imaplib.IMAP4(self.dc.host, self.dc.imap_port, timeout=30)
                    conns[i].login(user(i), password(i))
                typ, _ = conns[i].append("INBOX", None, None,
                                         make_message(f"soak {len(self.sent)}", message_id=msgid))
                if typ == "OK":
                    self.sent.append(msgid)
                else:
                    self.errors += 1
            except (OSError, imaplib.IMAP4.error):
                self.errors += 1
                conns.pop(i, None)
            next_at += 1.0 / RATE
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        for conn in conns.values():
            try:
                conn.logout()
            except (OSError, imaplib.IMAP4.error):
                pass


def parent_fixed_fds(pid: int, reads: int = 5, pause: float = 0.02) -> int | None:
    """The parent's fds less two per live child (its pipe end and the exit sentinel), with its
    momentary opens left out. The sampler runs beside the parent's loop, so one read can land
    while it holds a /proc stat file, the status file being rewritten, or the pipe of a child
    it is forking or has just reaped. A leak stays in every read and a transient does not, so
    the smallest of a few reads 20 ms apart (each paired with a child count taken at once) is
    what the parent holds for itself."""
    values = []
    for _ in range(reads):
        count = fd_count(pid)
        if count is not None:
            values.append(count - 2 * len(child_pids(pid)))
        time.sleep(pause)
    return min(values) if values else None


def sample(sup_pid: int) -> dict:
    parent = psutil.Process(sup_pid)
    children = {}
    for pid in child_pids(sup_pid):
        try:
            uss = psutil.Process(pid).memory_full_info().uss / MB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        fds = fd_count(pid)
        if fds is not None:
            children[pid] = (uss, fds)
    return {"t": time.monotonic(), "parent_rss": parent.memory_info().rss / MB,
            "parent_fds": fd_count(sup_pid), "parent_fixed_fds": parent_fixed_fds(sup_pid),
            "children": children}


def growth(samples: list[dict]) -> tuple[list[float], list[int]]:
    """USS and fd change of every process that lived through the whole soak (in the first and
    the last sample: a restarted process has not had its first email yet when first seen)."""
    first, last = samples[0]["children"], samples[-1]["children"]
    pids = [p for p in first if p in last]
    return [last[p][0] - first[p][0] for p in pids], [last[p][1] - first[p][1] for p in pids]


def warm_up(dc, n: int, sup, timeout: float = 120) -> None:
    """One email to every mailbox, and wait until all are handled."""
    for i in range(n):
        imap = imaplib.IMAP4(dc.host, dc.imap_port, timeout=30)
        imap.login(user(i), password(i))
        imap.append("INBOX", None, None, make_message("warm-up", message_id=f"<warm-{i}@bench.example>"))
        imap.logout()
    deadline = time.monotonic() + timeout
    while len(sup.emails()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm-up: {len(sup.emails())}/{n} handled")
        time.sleep(0.5)


def plot(samples: list[dict], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: pip install -r bench/requirements.txt"
    t0 = samples[0]["t"]
    minutes = [(s["t"] - t0) / 60 for s in samples]
    uss = [[v[0] for v in s["children"].values()] for s in samples]
    fds = [[v[1] for v in s["children"].values()] for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    ax1.plot(minutes, [median(u) for u in uss], label="tenant USS, median")
    ax1.plot(minutes, [pct(u, 95) for u in uss], label="tenant USS, p95")
    ax1.set_ylabel("MB")
    ax1b = ax1.twinx()
    ax1b.plot(minutes, [s["parent_rss"] for s in samples], "k--", label="parent RSS")
    ax1b.set_ylabel("parent RSS, MB")
    ax1.legend(loc="upper left")
    ax1b.legend(loc="upper right")
    ax2.plot(minutes, [median(f) for f in fds], label="tenant fds, median")
    ax2.plot(minutes, [max(f) if f else 0 for f in fds], label="tenant fds, max")
    ax2.plot(minutes, [s["parent_fds"] for s in samples], label="parent fds")
    ax2.set_xlabel("minutes")
    ax2.set_ylabel("open fds")
    ax2.legend()
    fig.suptitle(f"soak: {len(samples[-1]['children'])} tenants")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return f"plot: {path.name}"


def main() -> None:
    with Bench("soak", __doc__) as b:
        n = 200
        duration = 300.0 if b.quick else 1800.0
        b.limit(duration + 300)
        rng = random.Random(14)
        dc = b.dovecot(n)
        sup = b.supervisor(dc, n, handler={"target": "tenant_proc.handlers:jsonl",
                                           "path": str(b.workdir / "sup" / "emails.jsonl")})
        sup.start(wait_running=False)
        wait_all(sup, n, ("idle",), timeout=180)
        assert sup.proc is not None
        b.log(f"{n} tenants idle; warm-up: one email each")
        warm_up(dc, n, sup)
        time.sleep(2)
        b.log(f"soaking for {duration:.0f}s")
        mailer = Mailer(dc, n, rng)
        mailer.start()
        started = time.monotonic()
        next_kick, next_crash = started + KICK_EVERY, started + CRASH_EVERY
        samples: list[dict] = []
        kicks = crashes = 0
        while time.monotonic() - started < duration:
            samples.append(sample(sup.proc.pid))
            now = time.monotonic()
            if now >= next_kick:
                dc.kick(user(rng.randrange(n)))
                kicks += 1
                next_kick += KICK_EVERY
            if now >= next_crash:
                pids = child_pids(sup.proc.pid)
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    crashes += 1
                next_crash += CRASH_EVERY
            time.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - now)))
        mailer.stop_event.set()
        mailer.join(30)
        b.log(f"sent {len(mailer.sent)} emails; waiting for the last ones (restart backoff 60 s)")
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            handled = Counter(e["message_id"] for e in sup.emails())
            if all(m in handled for m in mailer.sent):
                break
            time.sleep(1)
        samples.append(sample(sup.proc.pid))
        exit_code = sup.stop(timeout=60)

        handled = Counter(e["message_id"] for e in sup.emails() if "warm-" not in e["message_id"])
        lost = [m for m in mailer.sent if m not in handled]
        duplicated = [m for m, c in handled.items() if c > 1]
        uss_growth, fd_growth = growth(samples)
        rss_growth = samples[-1]["parent_rss"] - samples[0]["parent_rss"]
        # What the parent holds beyond two fds per live child must not change while children
        # crash, restart and reconnect (parent_fixed_fds leaves out momentary opens).
        parent_fds = [s["parent_fixed_fds"] for s in samples]
        note = plot(samples, HERE / "soak.png")
        worst_uss = max(uss_growth) if uss_growth else float("nan")
        b.emit({
            "tenants": n, "duration_s": duration, "sent": len(mailer.sent), "send_errors": mailer.errors,
            "kicks": kicks, "crashes": crashes, "lost": len(lost), "duplicated": len(duplicated),
            "uss_growth_mb": {"median": round(median(uss_growth), 3),
                              "p95": round(pct(uss_growth, 95), 3), "max": round(worst_uss, 3),
                              "processes": len(uss_growth)},
            "parent_rss_growth_mb": round(rss_growth, 2),
            "child_fd_changes": dict(Counter(fd_growth)),
            "parent_fixed_fds": {"min": min(parent_fds), "max": max(parent_fds)},
            "supervisor_exit_code": exit_code,
        }, [target(f"soak {duration / 60:.0f} min, {n} tenants: USS growth per tenant process (p95)",
                   round(pct(uss_growth, 95), 3), "MB", 0.3, "0 (each process's own first sample after the warm-up)",
                   ok=pct(uss_growth, 95) <= 0.3, note=f"max {worst_uss:.3f} MB; {note}"),
            target("soak: parent RSS growth", round(rss_growth, 2), "MB", 5.0, "0 (first sample)",
                   ok=rss_growth <= 5.0),
            target("soak: open fds constant (children changed / parent range)",
                   sum(1 for g in fd_growth if g != 0), "processes", 1, "0",
                   ok=not any(fd_growth) and min(parent_fds) == max(parent_fds),
                   note=f"parent, less 2 per live child: {min(parent_fds)}..{max(parent_fds)}"),
            target("soak: emails lost / duplicated", len(lost) + len(duplicated), "emails", 1,
                   f"{len(mailer.sent)} sent, {kicks} kicks, {crashes} crashes",
                   ok=not lost and not duplicated)])


if __name__ == "__main__":
    main()
