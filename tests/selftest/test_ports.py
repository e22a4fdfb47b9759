"""Test servers' ports (tests/servers/ports.py) never coincide, across processes, and are never
ones the kernel hands out by itself (issue 20 item 7: `duplicate listener` in a fresh CI run)."""
from __future__ import annotations

import multiprocessing
import socket

from tests.servers import ports
from tests.servers.ports import ephemeral_range, reserve_port


def _reserve_in_child(count: int, conn) -> None:
    held = [reserve_port() for _ in range(count)]
    conn.send([r.port for r in held])
    conn.recv()  # hold them until the parent has compared


def test_reservations_in_one_process_are_distinct_and_below_the_ephemeral_range():
    held = [reserve_port() for _ in range(200)]
    ports = [r.port for r in held]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < ephemeral_range()[0] for p in ports)


def test_another_process_is_never_given_a_held_port():
    held = [reserve_port() for _ in range(100)]  # the Reservations must live: they hold the locks
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_reserve_in_child, args=(100, child))
    proc.start()
    try:
        theirs = parent.recv()
        assert not set(theirs) & {r.port for r in held}
        assert len(set(theirs)) == 100
    finally:
        parent.send("done")
        proc.join(10)


def test_a_released_port_is_free_again_and_a_bound_one_is_skipped(monkeypatch):
    first = reserve_port()
    port = first.port
    # Every search starts at this port from now on.
    monkeypatch.setattr(ports.random, "randrange", lambda n: port - ports.LOWEST)
    assert reserve_port.__module__ == ports.__name__
    held = reserve_port()
    assert held.port == port + 1  # held by `first`: the next one
    held.release()
    first.release()
    again = reserve_port()
    assert again.port == port
    again.release()
    with socket.socket() as busy:  # something outside the tests listens on it now
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert reserve_port().port != port


def test_dovecot_gets_two_different_ports(dovecot):
    assert dovecot.imap_port != dovecot.imaps_port
    assert max(dovecot.imap_port, dovecot.imaps_port) < ephemeral_range()[0]
