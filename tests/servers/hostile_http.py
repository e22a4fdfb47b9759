"""A small real HTTP server that answers badly on purpose (loopback only, test-only).

Whatever a company process asks over HTTP (a webhook POST, a token request, a Supabase query),
this answers every request, any method and path, with its current `answer`:

    with HostileHttp(Answer(trickle=0.5)) as server:       # the whole answer, a byte every 0.5 s
    with HostileHttp(Answer(503, filler=64 * MB)) as server: # a 64 MB body after `body`
    with HostileHttp(Answer(307, headers=(("Location", other.url),))) as server:

and records each request (method, path, headers, body). answer_bytes() and send_answer() are what
the webhook receiver (tests/servers/webhook_receiver.py) uses for the same misbehaviour.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Iterator

from tests.servers.ports import reserve_port

MB = 1024 * 1024
FILLER_CHUNK = b"x" * (64 * 1024)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: tuple[tuple[str, str], ...] = ()
    trickle: float = 0.0  # seconds between single bytes of the whole answer, status line on
    trickle_for: float = 30.0  # a trickle ends (connection closed) after this long at most
    filler: int = 0  # bytes of body sent after `body`, in 64 KB pieces


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


def answer_bytes(answer: Answer) -> Iterator[bytes]:
    """The answer as it goes on the wire: head, body, then the filler."""
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = "Status"
    head = [f"HTTP/1.1 {answer.status} {phrase}", "Content-Type: application/json",
            f"Content-Length: {len(answer.body) + answer.filler}"]
    head += [f"{name}: {value}" for name, value in answer.headers]
    yield ("\r\n".join(head) + "\r\n\r\n").encode()
    yield answer.body
    left = answer.filler
    while left > 0:
        yield FILLER_CHUNK[:left]
        left -= len(FILLER_CHUNK)


def send_answer(out: BinaryIO, answer: Answer, stop: threading.Event) -> None:
    """Write the answer (trickled if asked); a client that hung up ends it quietly."""
    try:
        if not answer.trickle:
            for piece in answer_bytes(answer):
                out.write(piece)
            return
        until = time.monotonic() + answer.trickle_for
        for piece in answer_bytes(answer):
            for byte in piece:
                out.write(bytes([byte]))
                out.flush()
                if stop.wait(answer.trickle) or time.monotonic() > until:
                    return
    except OSError:
        pass  # the client gave up (its deadline) or was killed


class HostileHttp:
    def __init__(self, answer: Answer = Answer(), host: str = "127.0.0.1") -> None:
        self.answer = answer
        self.host = host
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reservation = reserve_port((host,))
        self.port = self._reservation.port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def seen(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def __enter__(self) -> HostileHttp:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._lock:
                    owner.requests.append(Request(self.command, self.path, dict(self.headers.items()),
                                                  body, time.monotonic()))
                send_answer(self.wfile, owner.answer, owner._stop)
                self.close_connection = True

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _any

        server = ThreadingHTTPServer((self.host, self.port), Handler, bind_and_activate=False)
        server.allow_reuse_address = True
        server.daemon_threads = True
        server.block_on_close = False
        server.server_bind()
        server.server_activate()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._reservation.release()
