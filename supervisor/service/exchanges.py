"""One request in, one answer out, then close: the connections of the control socket and of
the metrics endpoint, served from the arbiter's one loop.

The parent forks, so no thread: the listening socket and every accepted connection are
non-blocking and wait in the arbiter's selector with everything else; a client that connects
and says nothing costs one entry in that selector, never a wait. Bounds, so a stuck or hostile
client can neither hold the loop nor grow its memory:
- a request is read up to `max_request` bytes (more is answered `too_large`);
- a connection's whole exchange, read and write, ends at its deadline;
- at most `max_connections` are open. At the cap the oldest connection still waiting for its
  request is dropped to make room, so a crowd of silent clients cannot keep a real scrape or
  `status` out; only when every connection is being answered does a newcomer get `busy`.
- one call accepts at most `max_connections` newcomers: a flood of connects cannot hold the loop.
"""
from __future__ import annotations

import logging
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

# The answer once the request is complete, or None while more must be read.
Respond = Callable[[bytes], "bytes | None"]


@dataclass(frozen=True)
class Limits:
    max_request: int  # bytes
    deadline: float  # seconds for the whole exchange
    max_connections: int
    too_large: bytes  # the answer to a request above max_request
    busy: bytes  # the answer when every open connection is being answered


@dataclass(eq=False)  # hashed by identity: it sits in the selector's ready sets
class _Client:
    sock: socket.socket
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""
    sent: int = 0

    def fileno(self) -> int:
        return self.sock.fileno()


class Exchanges:
    def __init__(self, name: str, listener: socket.socket, selector: selectors.BaseSelector,
                 respond: Respond, limits: Limits, log: logging.Logger) -> None:
        listener.setblocking(False)
        self.name = name  # for the log: "control socket", "metrics"
        self.listener = listener
        self.selector = selector
        self.respond = respond
        self.limits = limits
        self.log = log
        self.clients: dict[int, _Client] = {}  # in the order they were accepted
        selector.register(listener, selectors.EVENT_READ, None)

    def serve(self, ready: set[Any]) -> None:
        """Accept, read, answer and write what is ready; drop clients past their deadline."""
        now = time.monotonic()
        if self.listener in ready:
            self._accept(now)
        for client in list(self.clients.values()):
            if now >= client.deadline:
                self._close(client)
            elif client in ready:
                self._step(client)

    def next_deadline(self) -> float:
        return min((c.deadline for c in self.clients.values()), default=float("inf"))

    def close(self) -> None:
        """Every connection and the listener's place in the selector (the owner closes it)."""
        for client in list(self.clients.values()):
            self._close(client)
        try:
            self.selector.unregister(self.listener)
        except (KeyError, ValueError):
            pass

    def _accept(self, now: float) -> None:
        for _ in range(self.limits.max_connections):
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("%s: accept failed: %s", self.name, exc)
                return
            conn.setblocking(False)
            client = _Client(conn, now + self.limits.deadline)
            if len(self.clients) >= self.limits.max_connections and not self._make_room():
                client.outbox = self.limits.busy
                self._flush_and_close(client)
                continue
            self.clients[client.fileno()] = client
            self.selector.register(client, selectors.EVENT_READ, None)
            self._step(client)  # a client's request is usually there already: answer at once

    def _make_room(self) -> bool:
        silent = next((c for c in self.clients.values() if not c.outbox), None)
        if silent is None:
            return False
        self._close(silent)
        return True

    def _step(self, client: _Client) -> None:
        if client.outbox:
            self._write(client)
            return
        try:
            chunk = client.sock.recv(self.limits.max_request + 1 - len(client.inbox))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        if not chunk:
            self._close(client)  # gone before a full request: nothing to answer
            return
        client.inbox += chunk
        answer = self.respond(bytes(client.inbox))
        if answer is None:
            if len(client.inbox) <= self.limits.max_request:
                return
            answer = self.limits.too_large
        client.outbox = answer
        client.inbox.clear()
        self.selector.modify(client, selectors.EVENT_WRITE, None)
        self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            client.sent += client.sock.send(client.outbox[client.sent:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        if client.sent >= len(client.outbox):
            self._close(client)

    def _flush_and_close(self, client: _Client) -> None:
        try:
            client.sock.send(client.outbox)
        except OSError:
            pass
        client.sock.close()

    def _close(self, client: _Client) -> None:
        if self.clients.pop(client.fileno(), None) is not None:
            try:
                self.selector.unregister(client)
            except (KeyError, ValueError):
                pass
        client.sock.close()
