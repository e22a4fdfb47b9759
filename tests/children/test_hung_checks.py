"""supervisor/children/hung_checks.py: the heap pops a tenant no later than a full scan would look."""
from __future__ import annotations

from supervisor.children.hung_checks import NOT_SCHEDULED, HungChecks, check_due
from supervisor.children.records import State, TenantRecord

TIMEOUT = 30.0


def running(last_heartbeat: float, quiet_for: float = 0.0, next_probe_at: float = 0.0) -> TenantRecord:
    record = TenantRecord(id="t", name="T", spec=None)
    record.state, record.handle = State.RUNNING, object()
    record.started_at, record.last_heartbeat = 0.0, last_heartbeat
    record.quiet_for, record.next_probe_at = quiet_for, next_probe_at
    return record


def test_a_chatty_tenant_is_due_just_after_its_timeout() -> None:
    due = check_due(running(100.0), TIMEOUT)
    assert due is not None and 130.0 < due < 130.1


def test_a_quiet_tenant_is_due_at_its_probe_or_after_its_promise() -> None:
    assert check_due(running(100.0, quiet_for=145.0, next_probe_at=115.0), TIMEOUT) == 115.0
    due = check_due(running(100.0, quiet_for=145.0, next_probe_at=1e9), TIMEOUT)
    assert due is not None and 275.0 < due < 275.1


def test_not_running_is_never_due() -> None:
    record = running(100.0)
    record.state = State.STOPPING
    assert check_due(record, TIMEOUT) is None
    record.state, record.handle = State.RUNNING, None
    assert check_due(record, TIMEOUT) is None


def test_pop_due_returns_only_due_records_once_and_skips_superseded_entries() -> None:
    checks = HungChecks()
    early, late = running(0.0), running(50.0)
    late.id = "late"
    checks.schedule(late, TIMEOUT)
    checks.schedule(early, TIMEOUT)
    assert checks.pop_due(29.0) == []
    assert checks.pop_due(31.0) == [early]
    assert early.hung_check_at == NOT_SCHEDULED
    # A message moves late's check earlier (a quiet promise with a probe): the new entry wins,
    # the old one is skipped when it comes up.
    late.quiet_for, late.next_probe_at = 145.0, 60.0
    checks.schedule(late, TIMEOUT)
    assert checks.pop_due(61.0) == [late]
    assert checks.pop_due(100.0) == []
    assert len(checks) == 0


def test_a_later_moment_does_not_add_an_entry() -> None:
    checks = HungChecks()
    record = running(0.0)
    checks.schedule(record, TIMEOUT)
    record.last_heartbeat = 20.0  # a heartbeat: the old, earlier entry stays and is enough
    checks.schedule(record, TIMEOUT)
    assert len(checks) == 1
    assert checks.pop_due(31.0) == [record]


def test_rebuild_uses_the_new_timeout() -> None:
    checks = HungChecks()
    record = running(0.0)
    checks.schedule(record, TIMEOUT)
    checks.rebuild([record], 10.0)
    assert checks.pop_due(11.0) == [record]
