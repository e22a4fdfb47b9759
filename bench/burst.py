#!/usr/bin/env python3
"""Burst: M emails already in one mailbox, backfill = "all", null handler: emails per second.

The mailbox is filled by writing Maildir files directly and indexed by one STATUS before any
timing. The tenant's handler is the null handler plus a time stamp on the 1st and every 1,000th
email (bench.handlers:every); rate = (M - 1) / (last stamp - first stamp).
Baseline (same run): a bare imapclient FETCH BODY.PEEK[] loop over the same UIDs, batches of 100,
and the same loop calling the product's parse_email on each (the target: >= 0.8 x that one).
BURST_PROFILE=FILE cProfiles the tenant process from its first to its last email (pstats file).
"""
from __future__ import annotations

import json
import os
import shutil
import time

import psutil

from common import Bench, bare_connect, cpu_seconds, target, tenant_children, user
from tenant_proc.message import Envelope, parse_email
from tests.servers.imap.mail_helpers import make_message


def fill_maildir(dc, u: str, count: int) -> None:
    root = dc.mail_dir / u / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    body = "x" * 1500
    now = int(time.time())
    for i in range(count):
        msg = make_message(f"burst {i}", body=body, message_id=f"<burst-{i}@bench.example>")
        (root / "new" / f"{now}.M{i}P{os.getpid()}.bench").write_bytes(msg)
    if dc.is_root:
        for dirpath, dirs, files in os.walk(dc.mail_dir / u):
            shutil.chown(dirpath, "nobody", "nogroup")
            for f in files:
                shutil.chown(os.path.join(dirpath, f), "nobody", "nogroup")


def main() -> None:
    with Bench("burst", __doc__) as b:
        m = 2000 if b.quick else 10000
        b.limit(120 if b.quick else 300)
        dc = b.dovecot(1)
        t = time.monotonic()
        fill_maildir(dc, user(0), m)
        uidnext = dc.uidnext(user(0))  # Dovecot indexes the new files here, before any timing
        b.log(f"{m} emails written and indexed in {time.monotonic() - t:.1f}s (UIDNEXT {uidnext})")

        client = bare_connect(dc, 0)
        uids = client.search(["ALL"])
        t = time.monotonic()
        fetched = 0
        for start in range(0, len(uids), 100):
            data = client.fetch(uids[start:start + 100], ["BODY.PEEK[]", "INTERNALDATE", "RFC822.SIZE"])
            fetched += len(data)
        base_rate = fetched / (time.monotonic() - t)
        # The same loop plus the product's parser: the ceiling for any tenant using parse_email.
        t = time.monotonic()
        for start in range(0, len(uids), 100):
            data = client.fetch(uids[start:start + 100], ["BODY.PEEK[]", "INTERNALDATE", "RFC822.SIZE"])
            for uid, item in data.items():
                parse_email(item[b"BODY[]"], Envelope(tenant_id="b", folder="INBOX", uid=uid,
                                                      uidvalidity=1, size=0, received_at=0.0,
                                                      detected_at=0.0, truncated=False))
        parse_rate = len(uids) / (time.monotonic() - t)
        client.logout()
        b.log(f"baseline: {fetched} fetched at {base_rate:.0f}/s, with parse_email {parse_rate:.0f}/s")

        stamps = b.workdir / "every.jsonl"
        handler = {"target": "bench.handlers:every", "path": str(stamps), "every": 1000}
        profile = os.environ.get("BURST_PROFILE")  # a pstats file: cProfile the tenant (slower)
        if profile:
            handler.update(target="bench.handlers:profiled", total=m, profile=os.path.abspath(profile))
        sup = b.supervisor(dc, 1, imap={"backfill": "all"}, handler=handler)
        t0 = time.monotonic()
        sup.start(wait_running=False)
        deadline = time.monotonic() + (90 if b.quick else 240)
        rows: list[dict] = []
        # CPU per email of the tenant and of the parent from the first stamp seen to the last
        # (startup left out): steadier than the rate on a shared machine.
        cpu_at: list[tuple[int, float, float]] = []

        def sample_cpu(n: int) -> None:
            tenant, _ = cpu_seconds(tenant_children(sup.proc.pid))
            parent, _ = cpu_seconds([psutil.Process(sup.proc.pid)])
            cpu_at.append((n, tenant, parent))

        while time.monotonic() < deadline:
            if stamps.exists():
                rows = [json.loads(x) for x in stamps.read_text().splitlines() if x.strip()]
                if rows and not cpu_at:
                    sample_cpu(rows[-1]["n"])
                if rows and rows[-1]["n"] >= m:
                    break
            time.sleep(0.02 if not cpu_at else 0.1)
        wall = time.monotonic() - t0
        sample_cpu(m)
        sup.stop(timeout=30)
        if not rows or rows[-1]["n"] < m:
            raise RuntimeError(f"only {rows[-1]['n'] if rows else 0}/{m} handled")
        rate = (rows[-1]["n"] - 1) / (rows[-1]["t"] - rows[0]["t"])
        ratio = rate / parse_rate
        b.emit({"emails": m, "rate_per_s": round(rate), "run_to_last_s": round(wall, 2),
                "baseline_fetch_rate_per_s": round(base_rate),
                "baseline_fetch_parse_rate_per_s": round(parse_rate), "ratio_to_baseline": round(ratio, 2),
                "ratio_to_fetch_only": round(rate / base_rate, 2),
                "cpu_ms_per_email": {
                    "tenant": round((cpu_at[-1][1] - cpu_at[0][1]) * 1000 / max(1, m - cpu_at[0][0]), 3),
                    "parent": round((cpu_at[-1][2] - cpu_at[0][2]) * 1000 / max(1, m - cpu_at[0][0]), 3)}},
               [target(f"burst: {m} emails in one mailbox, null handler", round(rate), "emails/s",
                       round(0.8 * parse_rate), f"{parse_rate:.0f}/s bare FETCH + parse_email loop "
                       f"({base_rate:.0f}/s FETCH only)", higher_is_better=True,
                       baseline_value=round(parse_rate),
                       note=f"target ≥ 0.8 × bare FETCH + parse; {wall:.1f} s from run to the last one")])

if __name__ == "__main__":
    main()
