"""When each tenant next needs a look from the hung check, in deadline order.

murder_hung once walked every tenant every second; at 1,000 idle tenants that walk was the
largest part of the parent's housekeeping (bench/idle_cost.py), although a quiet tenant needs
a look only at its /proc probe (about every heartbeat_timeout) and a chatty one only when its
beats stop. This keeps one heap entry per tenant at the earliest moment its check could find
something; checks pop only the entries that are due.

Entries are lazy: a heartbeat makes a tenant's moment later without touching the heap (its old,
earlier entry pops, finds nothing and reschedules), and an entry superseded by an earlier one
is skipped. So the hung check never runs later than a full scan would have.
"""
from __future__ import annotations

import heapq
import itertools

from supervisor.children.records import State, TenantRecord

NOT_SCHEDULED = float("inf")
# murder_hung kills when the silence is strictly above the limit: look just after it, not at
# it, or a check exactly on time would find nothing and be rescheduled for the same moment.
OVERDUE_MARGIN = 0.001


def check_due(record: TenantRecord, timeout: float) -> float | None:
    """The earliest monotonic time at which murder_hung could act on record; None: never
    until something else (a start) changes it."""
    if record.handle is None or record.state not in (State.STARTING, State.RUNNING):
        return None
    last = record.last_heartbeat if record.last_heartbeat is not None else record.started_at
    if last is None:
        return None
    # No heartbeat and no promise left: killed as hung once the silence is *above* that.
    due = last + timeout + record.quiet_for + OVERDUE_MARGIN
    if record.quiet_for:
        due = min(due, record.next_probe_at)  # its /proc probe (which sets the next one)
    return due


class HungChecks:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TenantRecord]] = []
        self._order = itertools.count()  # ties: first scheduled first, never compare records

    def schedule(self, record: TenantRecord, timeout: float) -> None:
        """Call after anything that may move record's check earlier (a start, a message)."""
        due = check_due(record, timeout)
        if due is not None and due < record.hung_check_at:
            record.hung_check_at = due
            heapq.heappush(self._heap, (due, next(self._order), record))

    def pop_due(self, now: float) -> list[TenantRecord]:
        """The records whose check is due, each unscheduled: schedule each again after its
        check (a list, not a generator: rescheduling while popping could pop it again)."""
        heap, due_now = self._heap, []
        while heap and heap[0][0] <= now:
            due, _, record = heapq.heappop(heap)
            if due == record.hung_check_at:  # else superseded by an earlier entry
                record.hung_check_at = NOT_SCHEDULED
                due_now.append(record)
        return due_now

    def rebuild(self, records: list[TenantRecord], timeout: float) -> None:
        """After a reload (heartbeat_timeout may have changed): schedule every tenant anew."""
        self._heap.clear()
        for record in records:
            record.hung_check_at = NOT_SCHEDULED
            self.schedule(record, timeout)

    def next_due(self) -> float:
        return self._heap[0][0] if self._heap else NOT_SCHEDULED

    def __len__(self) -> int:
        return len(self._heap)
