"""A loopback TCP proxy for fault tests: forwards bytes, and can misbehave on command.

    with TcpProxy(("127.0.0.1", dovecot.imaps_port)) as proxy:   # tenant port = proxy.port
        proxy.blackhole()       # stop forwarding on every connection, new ones too; close nothing
        proxy.resume()          # forward again (connections the client gave up on just close)
        proxy.cut_fetch_after(8000, times=1)   # close a connection 8,000 bytes into a FETCH answer

It never parses IMAP beyond spotting the FETCH command in the client's bytes (plain-text port
only for cut_fetch_after: over TLS the command is not visible). One thread per direction per
connection, blocking sockets with short timeouts so every thread notices close() quickly.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

POLL = 0.05  # how often a pump re-checks its flags while it has nothing to read


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: "TcpProxy", client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self.cut_armed = False  # a FETCH of a body was sent: count the answer's bytes
        self.cut_after: int | None = None
        self.answer_bytes = 0
        self.held: list[bytes] | None = None  # server bytes withheld after a client's DONE
        self.hold_lock = threading.Lock()

    def start(self) -> None:
        for source, sink, upward in ((self.client, self.upstream, True), (self.upstream, self.client, False)):
            threading.Thread(target=self._pump, args=(source, sink, upward), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upward: bool) -> None:
        source.settimeout(POLL)
        try:
            while not self.closed.is_set():
                if self.proxy.frozen.is_set():  # black hole: read nothing, send nothing
                    time.sleep(POLL)
                    continue
                try:
                    data = source.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                if upward:
                    self._watch_command(data)
                    self._release_held(data)
                elif self._hold(data):
                    continue
                elif self.cut_armed and self.cut_after is not None:
                    room = self.cut_after - self.answer_bytes
                    if len(data) >= room:
                        sink.sendall(data[:room])
                        self.proxy.cuts_done += 1
                        break  # the server "drops the connection" mid-FETCH
                    self.answer_bytes += len(data)
                sink.sendall(data)
        except OSError:
            pass
        self.close()

    def _watch_command(self, data: bytes) -> None:
        proxy = self.proxy
        for line in data.split(b"\r\n"):
            if b" FETCH " in line:
                proxy.fetch_commands.append(line)
        if b"FETCH" in data and b"BODY.PEEK[]" in data and proxy.cuts_left > 0 and not self.cut_armed:
            proxy.cuts_left -= 1
            self.cut_armed, self.cut_after, self.answer_bytes = True, proxy.cut_bytes, 0

    def _release_held(self, data: bytes) -> None:
        """Arm the hold on DONE; release what was held once the client sends anything more."""
        with self.hold_lock:
            if self.held is not None:
                held, self.held = self.held, None
                for chunk in held:
                    self.client.sendall(chunk)
            if self.proxy.holds_left > 0 and b"DONE" in data.split(b"\r\n"):
                self.proxy.holds_left -= 1
                # With TCP_NODELAY the commands behind DONE can arrive in the same read: the
                # client did not wait for DONE's answer then, so there is nothing to withhold.
                # DONE alone at the end of a read is held until the client sends more.
                if data.endswith(b"DONE\r\n"):
                    self.held = []

    def _hold(self, data: bytes) -> bool:
        with self.hold_lock:
            if self.held is None:
                return False
            self.held.append(data)
            return True

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class TcpProxy:
    link_class: type = _Link  # tests/servers/proxies/fault_proxy.py plugs in a link that speaks a little IMAP

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.frozen = threading.Event()
        self.links: list[_Link] = []
        self.accepted = 0
        self.cuts_left = 0
        self.cut_bytes = 0
        self.cuts_done = 0
        # hold_done_answers(n): after each of the next n DONEs, the server's answer is withheld
        # until the client sends its next command (a client that waits for it never gets it).
        self.holds_left = 0
        self.fetch_commands: list[bytes] = []  # FETCH command lines from clients (plain text only)
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(POLL)
        self.host, self.port = host, self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self) -> "TcpProxy":
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            link = self.link_class(self, client, upstream)
            self.links.append(link)
            link.start()

    # ---- faults ------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Stop forwarding in both directions on every connection; keep them all open."""
        self.frozen.set()

    def resume(self) -> None:
        self.frozen.clear()

    def cut_fetch_after(self, nbytes: int, times: int = 1) -> None:
        """The next `times` connections that FETCH a body are closed after nbytes of answer."""
        self.cut_bytes, self.cuts_left = nbytes, times

    def hold_done_answers(self, times: int = 1) -> None:
        self.holds_left = times

    def open_links(self) -> int:
        return sum(not link.closed.is_set() for link in self.links)

    # ---- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        self.frozen.clear()
        self._listener.close()
        for link in list(self.links):
            link.close()
        self._thread.join(2)

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
