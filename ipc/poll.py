"""Waiting for fds to become readable, for both sides of the pipe: the supervisor's exit
sentinels and a tenant's parent pipe and IMAP socket. Here so that neither side reaches into
the other's control module for it."""
from __future__ import annotations

import select


def readable_fds(fds: list[int], timeout: float) -> set[int]:
    """poll(), not select(): a tenant forked after hundreds of siblings holds fds above 1024,
    which select() cannot watch (FD_SETSIZE)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    # POLLHUP/POLLERR count as readable: the read that follows reports EOF or the error.
    return {fd for fd, _ in poller.poll(max(timeout, 0.0) * 1000)}
