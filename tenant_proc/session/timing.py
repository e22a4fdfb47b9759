"""When the session tries again: the jittered reconnect delay (the server's suggested backoff
wins) and each poller's own phase. Pure functions of the clock and a random source."""
from __future__ import annotations

import random

from tenant_proc.errors import suggested_backoff


def reconnect_delay(backoff: float, exc: BaseException, rng: random.Random | None = None) -> float:
    """The jittered wait before the next connect; a server's "Suggested Backoff Time" wins.

    Jitter: many tenants on one server must not reconnect in step. A throttled tenant waits
    at least what the server asked (jitter only upwards), or the next LOGIN is throttled again.
    """
    rng = rng or random
    asked = suggested_backoff(str(exc))
    if asked is not None and asked >= backoff:
        return asked * rng.uniform(1.0, 1.2)
    return backoff * rng.uniform(0.8, 1.2)


def first_poll_at(now: float, interval: float, rng: random.Random | None = None) -> float:
    """A random phase inside the interval (uniform), so pollers started together spread out."""
    return now + (rng or random).uniform(0.0, interval)


def next_poll_at(previous: float, now: float, interval: float) -> float:
    """Keep the phase (a fixed rate from the first poll); after a poll that took longer than
    the interval, wait a whole interval from now instead of polling back to back."""
    due = previous + interval
    return due if due > now else now + interval
