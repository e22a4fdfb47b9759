"""The README's demo: a local Dovecot, three demo companies, the real supervisor on them.

It sends a few emails over IMAP APPEND, waits for the jsonl handler to record each one, and
prints how long each took from APPEND to handled, then `idle-supervisor status`, `ps`, and a
clean SIGTERM shutdown. Everything runs on loopback in a temporary directory.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.harness.supervisor_run import SupervisorRun, TenantEntry  # noqa: E402
from tests.servers.imap.dovecot import Dovecot  # noqa: E402
from tests.servers.imap.mail_helpers import make_message  # noqa: E402

COMPANIES = [("acme", "Acme AB"), ("globex", "Globex Corp"), ("foretag", "Företag Å")]
SUBJECTS = ["Where is my order #1001?", "Invoice question", "Påminnelse: faktura 42"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--emails", type=int, default=2, help="emails per company")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir for a look")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="idle-supervisor-demo-"))
    print(f"== idle-supervisor demo (work dir {workdir}) ==")
    with Dovecot(workdir / "dovecot") as dovecot:
        tenants = []
        for tid, name in COMPANIES:
            dovecot.add_user(tid, f"{tid}-demo-pw")
            tenants.append(TenantEntry(tid, tid, f"{tid}-demo-pw", name=name))
        print(f"Dovecot on {dovecot.host}:{dovecot.imaps_port} (TLS, private CA); "
              f"companies: {', '.join(n for _, n in COMPANIES)}")
        run = SupervisorRun(workdir / "supervisor", dovecot, tenants,
                            supervisor={"heartbeat_interval": 2, "heartbeat_timeout": 30})
        with run:
            started = time.monotonic()
            run.start(timeout=30)
            print(f"supervisor pid {run.proc.pid}: all {len(tenants)} companies in IMAP IDLE "
                  f"after {time.monotonic() - started:.2f}s\n")
            show_ps(run)
            latencies = send_and_watch(dovecot, run, args.emails)
            print()
            print(run.cli("status").stdout)
            code = run.stop()
            print(f"SIGTERM: every company logged out, supervisor exited {code}; "
                  f"IMAP sessions left: {len(dovecot.who())}")
        print(f"\nAPPEND -> handled: median {statistics.median(latencies):.3f}s, "
              f"max {max(latencies):.3f}s over {len(latencies)} emails "
              "(Dovecot itself waits 0.5s before telling an IDLE client).")
        if args.keep:
            print(f"config used: {run.config_path}  log: {run.log_path}")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def show_ps(run: SupervisorRun) -> None:
    pids = ",".join(str(p) for p in [run.proc.pid, *run.child_pids().values()])
    out = subprocess.run(["ps", "-o", "pid,comm,args", "-p", pids], capture_output=True, text=True)
    print("ps -o pid,comm,args:")
    for line in out.stdout.splitlines():
        print("  " + line[:110])
    print()


def send_and_watch(dovecot: Dovecot, run: SupervisorRun, per_company: int) -> list[float]:
    sent: dict[tuple[str, int], tuple[float, str, str]] = {}
    for round_ in range(per_company):
        for (tid, name), subject in zip(COMPANIES, SUBJECTS):
            subject = f"{subject} ({round_ + 1})"
            at = time.time()
            uid = dovecot.append(tid, f"{tid}-demo-pw", make_message(subject, body="Hello!"))
            sent[(tid, uid)] = (at, name, subject)
        time.sleep(0.3)
    emails = run.wait_emails(len(sent), timeout=30)
    latencies = []
    print("handled emails:")
    for email in sorted(emails, key=lambda e: e["handled_at"]):
        at, name, subject = sent[(email["tenant_id"], email["uid"])]
        latency = email["handled_at"] - at
        latencies.append(latency)
        print(f"  {name:<12} uid {email['uid']:<3} {subject!r:<40} handled {latency:.3f}s after APPEND")
    return latencies


if __name__ == "__main__":
    sys.exit(main())
