"""When the session tries again: the jittered reconnect delay (the server's suggested backoff
wins, a busy server's doubling wait next), when that backoff starts afresh, and each poller's
own phase. Pure functions of the clock and a random source."""
from __future__ import annotations

import random

from tenant_proc.errors import MAX_SERVER_BACKOFF, suggested_backoff
from tenant_proc.spec import ImapSettings


def reconnect_delay(backoff: float, exc: BaseException, rng: random.Random | None = None,
                    busy: float | None = None) -> float:
    """The jittered wait before the next connect; a server's "Suggested Backoff Time" wins.

    Jitter: many tenants on one server must not reconnect in step. A throttled tenant waits
    at least what the server asked (jitter only upwards), or the next LOGIN is throttled again.
    busy: the server refused the mailbox without saying how long (busy_wait): at least that.
    """
    rng = rng or random
    asked = suggested_backoff(str(exc))
    if asked is not None and asked >= backoff:
        return asked * rng.uniform(1.0, 1.2)
    if busy is not None and busy > backoff:
        return busy * rng.uniform(1.0, 1.2)
    return max(backoff * rng.uniform(0.8, 1.2), asked or 0.0)


def busy_wait(previous: float | None, first: float) -> float:
    """The next wait for a server that refuses the whole mailbox (quota, incident) and names no
    time: first, then doubling up to MAX_SERVER_BACKOFF (15 minutes; Gmail's download quota
    may hold for a day, and a wait of a quarter of an hour costs four logins an hour)."""
    return first if previous is None else min(max(previous * 2, first), MAX_SERVER_BACKOFF)


def backoff_earned(handled: bool, served_for: float, imap: ImapSettings) -> bool:
    """Whether a lost session earns a fresh reconnect backoff: an email was handled on it, or it
    sat in IDLE (or polled) for at least reconnect_backoff_max. An empty catch-up is not
    progress: a server that breaks every session right after it would get a login a second.
    Reset only after a session that long, logins stay under one per reconnect_backoff_max."""
    return handled or served_for >= imap.reconnect_backoff_max


def first_poll_at(now: float, interval: float, rng: random.Random | None = None) -> float:
    """A random phase inside the interval (uniform), so pollers started together spread out."""
    return now + (rng or random).uniform(0.0, interval)


def next_poll_at(previous: float, now: float, interval: float) -> float:
    """Keep the phase (a fixed rate from the first poll); after a poll that took longer than
    the interval, wait a whole interval from now instead of polling back to back."""
    due = previous + interval
    return due if due > now else now + interval
