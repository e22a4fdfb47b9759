"""A real HTTP receiver for the webhook handler's tests (loopback only, test-only).

A threaded http.server that verifies every request's signature the way the README tells an
answering service to, records what came, and answers from a plan:

    receiver.plan(500, 500, 500)            # then the default (200)
    receiver.plan(Reply(429, retry_after=1))
    receiver.plan(Reply(hang=5))            # hold the request open, answer nothing in time
    receiver.plan(Reply(trickle=0.5))       # the whole answer a byte every 0.5 s
    receiver.plan(Reply(503, filler=64 << 20))  # a 64 MB answer
    receiver.default = Reply(400, b"bad")   # every request not planned
    receiver.down(); receiver.up()          # the port refuses connections meanwhile
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.servers.hostile_http import Answer, send_answer
from tests.servers.ports import reserve_port


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    retry_after: float | None = None
    hang: float = 0.0  # seconds to wait before answering
    trickle: float = 0.0  # seconds between single bytes of the answer (tests/servers/hostile_http.py)
    filler: int = 0  # bytes of body after `body`


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    signature_ok: bool
    answered: int | None
    at: float = field(default_factory=time.monotonic)

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.body)


def signature_ok(secret: str, headers: dict[str, str], body: bytes, max_age: float = 300) -> bool:
    """The README's verification: HMAC over "<timestamp>." + body, and a fresh timestamp."""
    timestamp = headers.get("x-idle-timestamp", "")
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < max_age
    return fresh and hmac.compare_digest(expected, headers.get("x-idle-signature", ""))


class WebhookReceiver:
    def __init__(self, secret: str, host: str = "127.0.0.1") -> None:
        self.secret = secret
        self.host = host
        # Held for this receiver's life (tests/servers/ports.py): up() after down() binds the same
        # port, which no other test can take meanwhile.
        self._reservation = reserve_port((host,))
        self.port = self._reservation.port
        self.default = Reply()
        self.received: list[Received] = []
        self._plan: list[Reply] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.request_started = threading.Event()
        self.stopped = threading.Event()  # set by down(): ends a trickling answer

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/inbound"

    def plan(self, *replies: Reply | int) -> None:
        with self._lock:
            self._plan.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def next_reply(self) -> Reply:
        with self._lock:
            return self._plan.pop(0) if self._plan else self.default

    def record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_requests(self, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.requests()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"expected {count} webhook requests, got {len(self.requests())}")

    # -- lifecycle ------------------------------------------------------------------------

    def up(self) -> WebhookReceiver:
        receiver = self
        self.stopped.clear()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the handler's client expects

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = receiver.next_reply()
                receiver.request_started.set()
                item = Received(body, headers, signature_ok(receiver.secret, headers, body), None)
                receiver.record(item)
                if reply.hang:
                    time.sleep(reply.hang)
                if reply.trickle or reply.filler:  # a trickled answer counts as never answered
                    item.answered = None if reply.trickle else reply.status
                    answer = Answer(reply.status, reply.body, trickle=reply.trickle, filler=reply.filler)
                    send_answer(self.wfile, answer, receiver.stopped)
                    self.close_connection = True
                    return
                item.answered = reply.status
                try:
                    self.send_response(reply.status)
                    if reply.retry_after is not None:
                        self.send_header("Retry-After", str(int(reply.retry_after)))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up (timeout) or was killed

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening: connections to the port are refused until up() (same port)."""
        self.stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
