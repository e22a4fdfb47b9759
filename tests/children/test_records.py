"""Pure supervision logic: state machine transitions, restart policy, reload diff."""
from __future__ import annotations

import random
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from ipc.protocol import EXIT_AUTH, EXIT_CONFIG
from supervisor.children.records import (
    MAX_QUIET,
    RestartPolicy,
    State,
    StopReason,
    TenantRecord,
    diff_tenants,
)
from tenant_proc.spec import Secret, TenantSpec

POLICY = RestartPolicy(backoff=60, jitter=0.1, failed_backoff=900, max_restarts=5, window=600)


def spec(tid: str = "acme", **kw) -> TenantSpec:
    base = dict(id=tid, name=f"{tid} AB", host="127.0.0.1", port=993, security="tls",
                username=f"{tid}@example.com", password=Secret("pw"))
    base.update(kw)
    return TenantSpec(**base)


def started(now: float = 0.0) -> TenantRecord:
    record = TenantRecord(id="acme", name="Acme AB", spec=spec())
    record.mark_started(now, pid=123, handle=object())
    return record


def test_first_heartbeat_moves_starting_to_running_and_shows_child_state():
    record = started()
    assert record.state is State.STARTING and record.display_state() == "starting"
    record.on_heartbeat(1.0, {"state": "idle", "mode": "idle", "counters": {"processed": 2}})
    assert record.state is State.RUNNING
    assert record.display_state() == "idle" and record.mode == "idle"
    assert record.counters["processed"] == 2


def test_crash_goes_to_backoff_with_jittered_delay():
    record = started()
    record.on_exit(10.0, -9, POLICY, random.Random(1), shutting_down=False)
    assert record.state is State.BACKOFF
    assert 10 + 54 <= record.next_start_at <= 10 + 66
    assert record.last_error == "killed by SIGKILL"


def test_jitter_spreads_restarts():
    rng = random.Random(7)
    delays = {round(POLICY.crash_delay(rng), 3) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 54 and max(delays) <= 66


def test_auth_and_config_exits_fail_with_long_backoff():
    for code in (EXIT_AUTH, EXIT_CONFIG):
        record = started()
        record.on_exit(5.0, code, POLICY, random.Random(), shutting_down=False)
        assert record.state is State.FAILED
        assert record.next_start_at == 905.0


def test_restart_intensity_trips_to_failed():
    record = started()
    now = 0.0
    for _ in range(POLICY.max_restarts):
        record.on_exit(now, 1, POLICY, random.Random(), shutting_down=False)
        assert record.state is State.BACKOFF
        now += 61
        record.mark_started(now, 1, object())
    record.on_exit(now, 1, POLICY, random.Random(), shutting_down=False)
    assert record.state is State.FAILED and "crashes within" in record.last_error


def test_counters_survive_restarts():
    record = started()
    record.on_heartbeat(1, {"state": "idle", "counters": {"processed": 3, "failed": 1}})
    record.on_exit(2, 1, POLICY, random.Random(), shutting_down=False)
    record.mark_started(70, 2, object())
    record.on_heartbeat(71, {"state": "idle", "counters": {"processed": 1, "failed": 0}})
    assert record.counters["processed"] == 4 and record.counters["failed"] == 1
    assert record.restarts == 1


def test_changed_tenant_restarts_with_pending_spec():
    record = started()
    new = spec(host="127.0.0.2")
    record.pending_spec = new
    record.begin_stop(1.0, StopReason.CHANGED, 10)
    record.on_exit(2.0, 0, POLICY, random.Random(), shutting_down=False)
    assert record.spec == new and record.next_start_at == 2.0 and record.pending_spec is None


def test_shutdown_stops_for_good():
    record = started()
    record.begin_stop(1.0, StopReason.SHUTDOWN, 10)
    assert record.display_state() == "starting"
    record.on_exit(2.0, 0, POLICY, random.Random(), shutting_down=True)
    assert record.state is State.STOPPED and record.next_start_at is None


def test_hung_detection_uses_start_time_before_first_heartbeat():
    record = started(now=100.0)
    assert not record.heartbeat_overdue(129.0, 30)
    assert record.heartbeat_overdue(131.0, 30)
    record.on_heartbeat(131.0, {"state": "idle"})
    assert not record.heartbeat_overdue(160.0, 30)


def test_a_quiet_heartbeat_extends_the_allowed_silence_until_the_next_normal_beat():
    record = started(now=100.0)
    record.on_heartbeat(100.0, {"state": "idle", "quiet_for": 115.0})
    assert record.heartbeat_overdue(131.0, 30)  # past the usual timeout...
    assert record.quiet_silence_left(131.0, 30) == 114.0  # ...but promised to be quiet
    assert record.quiet_silence_left(246.0, 30) < 0
    record.on_heartbeat(140.0, {"state": "processing"})  # a normal beat ends the promise
    assert record.quiet_silence_left(171.0, 30) == 0.0 and record.heartbeat_overdue(171.0, 30)
    record.on_heartbeat(180.0, {"state": "idle", "quiet_for": 1e9})  # capped
    assert record.quiet_silence_left(180.0, 30) == 30 + MAX_QUIET
    for bad in (-5, "a lot", None):
        record.on_heartbeat(200.0, {"state": "idle", "quiet_for": bad})
        assert record.quiet_for == 0.0


def test_sighup_retries_failed_at_once():
    record = started()
    record.on_exit(5.0, EXIT_AUTH, POLICY, random.Random(), shutting_down=False)
    record.retry_failed_now(6.0)
    assert record.next_start_at == 6.0


def test_diff_classifies_every_tenant():
    a, b, c = spec("a"), spec("b"), spec("c")
    diff = diff_tenants({"a": a, "b": b, "c": c},
                        {"a": a, "b": spec("b", password=Secret("new")), "d": spec("d")})
    assert diff.added == ("d",) and diff.removed == ("c",)
    assert diff.changed == ("b",) and diff.unchanged == ("a",)


def test_diff_invalid_to_valid_is_a_change():
    diff = diff_tenants({"a": None}, {"a": spec("a")})
    assert diff.changed == ("a",)


# ---- properties ---------------------------------------------------------------------

EVENTS = st.lists(st.sampled_from(["heartbeat", "crash", "auth", "hang", "change", "stop"]),
                  max_size=40)


@settings(max_examples=300, deadline=None)
@given(EVENTS, st.integers(0, 2**32))
def test_state_machine_invariants(events, seed):
    """Whatever happens, the record stays coherent: a dead record is never RUNNING/STARTING,
    restart delays are bounded, counters never go backwards, FAILED waits the long backoff."""
    rng = random.Random(seed)
    record = started()
    now = 0.0
    processed = 0
    for event in events:
        now += rng.uniform(0, 100)
        if not record.is_alive():
            if record.next_start_at is None:
                break
            now = max(now, record.next_start_at)
            record.mark_started(now, 1, object())
        if event == "heartbeat":
            processed_child = rng.randint(0, 5)
            before = record.counters["processed"]
            record.on_heartbeat(now, {"state": "idle", "counters": {"processed": processed_child}})
            assert record.counters["processed"] >= before or processed_child < processed
            processed = processed_child
        elif event in ("crash", "auth"):
            code = 1 if event == "crash" else EXIT_AUTH
            record.on_exit(now, code, POLICY, rng, shutting_down=False)
            processed = 0
            assert record.state in (State.BACKOFF, State.FAILED)
            delay = record.next_start_at - now
            if record.state is State.BACKOFF:
                assert 54 <= delay <= 66
            else:
                assert abs(delay - POLICY.failed_backoff) < 1e-6
        elif event in ("hang", "change", "stop"):
            reason = {"hang": StopReason.HUNG, "change": StopReason.CHANGED,
                      "stop": StopReason.SHUTDOWN}[event]
            record.begin_stop(now, reason, 10)
            assert record.state is State.STOPPING
            record.on_exit(now + 1, 0, POLICY, rng, shutting_down=event == "stop")
            processed = 0
            if event == "stop":
                assert record.state is State.STOPPED and record.next_start_at is None
        assert record.is_alive() or record.state not in (State.RUNNING, State.STARTING)


@given(st.lists(st.floats(0, 10_000), max_size=30))
def test_restart_intensity_counts_only_the_window(times):
    crash_times = deque(sorted(times))
    now = max(times, default=0.0)
    tripped = POLICY.too_many_crashes(crash_times, now)
    recent = [t for t in times if now - t <= POLICY.window]
    assert tripped == (len(recent) > POLICY.max_restarts)
