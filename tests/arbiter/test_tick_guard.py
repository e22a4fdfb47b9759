"""The failed-tick budget (pure logic; the end-to-end behaviour is in test_control_socket.py)."""
from __future__ import annotations

from supervisor.arbiter.tick_guard import TickFailures, describe


def test_failures_count_only_within_the_window():
    guard = TickFailures(limit=3, window=10.0)
    assert not guard.record(0.0) and not guard.record(5.0)
    assert not guard.record(11.0)  # the first has left the window: 2 in it
    assert guard.record(12.0)  # 5.0, 11.0, 12.0


def test_describe_is_one_line_naming_the_exception_and_where():
    try:
        {}["missing\nkey"]
    except KeyError as exc:
        text = describe(exc)
    assert "\n" not in text
    assert text.startswith("KeyError: ") and "test_tick_guard.py:" in text
    assert text.endswith("in test_describe_is_one_line_naming_the_exception_and_where")
