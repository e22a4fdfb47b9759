"""What every benchmark shares: a bounded run, its own Dovecot, the real supervisor, bare baselines.

Every benchmark is one script that prints one JSON line. Everything it starts (Dovecot, the
supervisor and its children, bare baseline processes) is stopped on exit, on failure and when
the time limit (SIGALRM) strikes.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
from imapclient import IMAPClient  # noqa: E402

from tests.servers.imap.dovecot import Dovecot  # noqa: E402
from tests.harness.supervisor_run import SupervisorRun, TenantEntry  # noqa: E402


class BenchTimeout(Exception):
    pass


def raise_nofile() -> tuple[int, int]:
    """1,000 tenants, each a pipe + a socket + a sentinel: the default 1,024 is too few."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "load1": round(os.getloadavg()[0], 2)}


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(round(q / 100.0 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def user(i: int) -> str:
    return f"u{i:04d}"


def password(i: int) -> str:
    return f"pw{i:04d}"


class Bench:
    """with Bench("name", time_limit) as b: ... ; b.emit(...) prints the JSON line."""

    def __init__(self, name: str, description: str = "",
                 arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
        """arguments: adds a benchmark's own options to --quick and --keep."""
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--quick", action="store_true", help="small size, finishes fast")
        parser.add_argument("--keep", action="store_true", help="keep the work dir")
        if arguments is not None:
            arguments(parser)
        self.args = parser.parse_args()
        self.quick: bool = self.args.quick
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self._cleanups: list[Callable[[], None]] = []
        self.started = time.monotonic()

    def __enter__(self) -> "Bench":
        raise_nofile()

        def on_alarm(signum: int, frame: Any) -> None:
            raise BenchTimeout(f"{self.name}: time limit reached")

        def on_term(signum: int, frame: Any) -> None:
            raise SystemExit(f"{self.name}: signal {signum}")

        signal.signal(signal.SIGALRM, on_alarm)
        signal.signal(signal.SIGTERM, on_term)
        return self

    def limit(self, seconds: float) -> None:
        signal.alarm(int(seconds) + 1)

    def on_exit(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        signal.alarm(0)
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception as err:  # keep cleaning up
                print(f"cleanup: {type(err).__name__}: {err}", file=sys.stderr)
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if exc_type is not None and exc_type is not SystemExit:
            self.emit({"error": f"{exc_type.__name__}: {exc}"}, [])

    def log(self, msg: str) -> None:
        print(f"[{self.name} {time.monotonic() - self.started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # ---- servers and processes ----------------------------------------------------------

    def dovecot(self, n_users: int, extra: dict[str, str] | None = None) -> Dovecot:
        users = {user(i): password(i) for i in range(n_users)}
        users.update(extra or {})
        dc = Dovecot(self.workdir / "dovecot", users=users)  # one passwd write for all users
        dc.start()
        self.on_exit(dc.stop)
        return dc

    def supervisor(self, dc: Dovecot, n: int, name: str = "sup", supervisor: dict | None = None,
                   imap: dict | None = None, handler: dict | None = None,
                   host: str = "127.0.0.1", first: int = 0, extra: list[TenantEntry] | None = None,
                   ) -> SupervisorRun:
        """A supervisor config with the product's defaults unless overridden."""
        tenants = [TenantEntry(id=f"t{i:04d}", name=f"Company {i:04d}", user=user(i),
                               password=password(i), host=host) for i in range(first, first + n)]
        tenants += extra or []
        sup = {"heartbeat_interval": 5, "heartbeat_timeout": 30, "restart_backoff": 60,
               "restart_jitter": 0.1, "shutdown_timeout": 10, "kill_timeout": 5}
        sup.update(supervisor or {})
        imap_ = {"poll_interval": 60, "connect_timeout": 20, "command_timeout": 25}
        imap_.update(imap or {})
        run = SupervisorRun(self.workdir / name, dc, tenants, supervisor=sup, imap=imap_,
                            handler=handler or {"target": "tenant_proc.handlers:null"})
        self.on_exit(run.kill_tree)
        return run

    def emit(self, result: dict[str, Any], targets: list[dict[str, Any]]) -> None:
        out = {"bench": self.name, "quick": self.quick, "machine": machine(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "elapsed_s": round(time.monotonic() - self.started, 1), "targets": targets, **result}
        print(json.dumps(out), flush=True)


def target(name: str, value: float, unit: str, limit: float, baseline: Any, ok: bool | None = None,
           note: str = "", higher_is_better: bool = False,
           baseline_value: float | None = None) -> dict[str, Any]:
    """One row of RESULTS.md. baseline_value: the baseline as a number in the same unit, for
    the ratio column (value / baseline), the figure a noisy shared machine keeps honest."""
    if ok is None:
        ok = value >= limit if higher_is_better else value < limit
    row = {"target": name, "value": value, "unit": unit, "limit": limit, "baseline": baseline,
           "pass": bool(ok), "note": note}
    if baseline_value:
        row["baseline_value"] = baseline_value
        row["ratio"] = round(value / baseline_value, 2)
    return row


# ---- the supervisor's children, seen from outside ---------------------------------------------

def tenant_children(sup_pid: int) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in child_pids(sup_pid) if psutil.pid_exists(pid)]


def child_pids(sup_pid: int) -> list[int]:
    """The supervisor's children from the kernel's own list: one read. psutil's children()
    reads every process's stat (2,000+ with Dovecot's), and polling that every 50 ms during a
    start took ~9% of the machine from the processes being measured."""
    try:
        with open(f"/proc/{sup_pid}/task/{sup_pid}/children") as fh:
            return [int(pid) for pid in fh.read().split()]
    except OSError:
        return []


def title_state(pid: int) -> str | None:
    """The state in a child's title ("Company 0001 [idle] idle-supervisor"); None if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            title = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    start, end = title.find("["), title.find("]")
    return title[start + 1:end] if 0 <= start < end else "?"


def wait_all(sup: SupervisorRun, n: int, states: tuple[str, ...], timeout: float,
             interval: float = 0.1) -> float:
    """Wait until n children show one of states in their title; returns monotonic time then.

    A child seen in one of states is not read again (they stay there while nothing happens),
    so the polling costs little next to what it measures."""
    deadline = time.monotonic() + timeout
    arrived: set[int] = set()
    while time.monotonic() < deadline:
        assert sup.proc is not None
        if sup.proc.poll() is not None:
            raise RuntimeError(f"supervisor exited {sup.proc.returncode}: {sup.log_text()[-2000:]}")
        pids = child_pids(sup.proc.pid)
        arrived &= set(pids)  # a child that exited is no longer there
        arrived.update(pid for pid in pids if pid not in arrived and title_state(pid) in states)
        if len(arrived) >= n:
            return time.monotonic()
        time.sleep(interval)
    raise RuntimeError(f"not all {n} tenants in {states} after {timeout}s: {len(arrived)} arrived")


def cpu_seconds(procs: list[psutil.Process]) -> tuple[float, int]:
    """CPU time used so far (all threads): /proc/PID/schedstat's nanoseconds on the CPU where
    the kernel has it, else user + system in clock ticks (10 ms steps: an idle process's few
    milliseconds per minute would round away)."""
    total, alive = 0.0, 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/schedstat") as fh:
                total += int(fh.read().split()[0]) / 1e9
            alive += 1
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            t = p.cpu_times()
            total += t.user + t.system
            alive += 1
        except psutil.NoSuchProcess:
            pass
    return total, alive


# ---- bare baselines: forked processes holding one imapclient IDLE connection -----------------

def client_context(dc: Dovecot) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(dc.ca_file))


def bare_connect(dc: Dovecot, i: int, host: str = "127.0.0.1") -> IMAPClient:
    client = IMAPClient(host, dc.imaps_port, ssl=True, ssl_context=client_context(dc), timeout=30)
    client.login(user(i), password(i))
    client.select_folder("INBOX", readonly=True)
    return client


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def kill_and_reap(pids: list[int]) -> None:
    """SIGKILL and reap bench children (a no-op for those already gone); empties the list."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    pids.clear()


def fork_child(bench: Bench, body: Callable[[], None], close_in_child: tuple[int, ...] = (),
               limit: int | None = None, label: str = "bench child") -> int:
    """Fork a child that runs body() and exits 0, or 1 if it raised (saying why on stderr, since
    os._exit skips the traceback). close_in_child: fds the child must not hold (the read end of
    its pipe, so the parent sees EOF when children die). limit: seconds after which the child
    ends by itself (SIGALRM), whatever the parent does. The bench kills and reaps it on exit."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd in close_in_child:
                os.close(fd)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the parent's time limit is not ours
            if limit:
                signal.alarm(limit)
            body()
            code = 0
        except BaseException as exc:
            print(f"{label}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    bench.on_exit(lambda: kill_and_reap([pid]))
    return pid


def fork_bare_idlers(bench: Bench, dc: Dovecot, indexes: list[int]) -> tuple[list[int], Callable[[float], int]]:
    """Fork one bare process per index (no supervisor): TLS, login, EXAMINE, IDLE, wait.

    The parent has imported everything and called gc.freeze() first (the design notes' floor).
    Each child writes one byte to a pipe once it is idling; SIGTERM makes it DONE, LOGOUT, exit.
    Returns the pids and wait_ready(timeout) -> number of children idling.
    """
    gc.collect()
    gc.freeze()
    ready_r, ready_w = os.pipe()
    pids: list[int] = []
    for i in indexes:
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(ready_r)
                signal.signal(signal.SIGTERM, _raise_stop)  # a flag would not end idle_check
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                client = bare_connect(dc, i)
                client.idle()
                os.write(ready_w, b"x")
                os.close(ready_w)
                try:
                    while True:
                        client.idle_check(timeout=600)
                except _Stop:
                    pass
                client.idle_done()
                client.logout()
                code = 0
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(ready_w)

    def cleanup() -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        try:
            os.close(ready_r)
        except OSError:
            pass

    bench.on_exit(cleanup)
    seen = {"n": 0}

    def wait_ready(timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while seen["n"] < len(pids) and time.monotonic() < deadline:
            import select

            r, _, _ = select.select([ready_r], [], [], max(0.0, deadline - time.monotonic()))
            if r:
                data = os.read(ready_r, 4096)
                if not data:
                    break
                seen["n"] += len(data)
        return seen["n"]

    return pids, wait_ready


def stop_bare(pids: list[int], timeout: float) -> tuple[float, int]:
    """SIGTERM all, reap all; returns (seconds, how many exited 0)."""
    t0 = time.monotonic()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    clean = 0
    pending = set(pids)
    deadline = t0 + timeout
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pending.discard(pid)
                continue
            if done:
                pending.discard(pid)
                clean += os.waitstatus_to_exitcode(status) == 0
        if pending:
            time.sleep(0.01)
    return time.monotonic() - t0, clean
