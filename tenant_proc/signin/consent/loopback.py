"""Where the browser comes back: a listening socket on 127.0.0.1 for one sign-in (RFC 8252 7.3,
loopback redirect; 8.3: the IP literal, not `localhost`, which a resolver may send elsewhere).

The redirect URI is `http://127.0.0.1:PORT/`; PORT is --port, or any free port (both
providers match loopback redirect URIs on any port). One connection at a time, each bounded
(CLIENT_TIMEOUT to send its request, MAX_REQUEST bytes): another local program poking the
port can delay the sign-in by seconds at most, never hold it. Requests that are not the
provider's answer (a favicon, someone opening the address by hand) get a short page and the
listener keeps waiting; the first request to `/` carrying `code` or `error` is the answer,
returned with its connection open, so the browser's page can say how the sign-in ended.
Nothing here is logged: the answer carries the authorization code.
"""
from __future__ import annotations

import errno
import select
import socket
import time
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

from tenant_proc.signin.consent.outcome import ConsentError

HOST = "127.0.0.1"
MAX_REQUEST = 8192  # request line and headers of the redirect; the provider's answer is < 2 KiB
CLIENT_TIMEOUT = 5.0  # seconds one connection may take to send its request
CLOSE_TEXT = "You can close this window."


class Redirect:
    """The browser's request that carried the provider's answer, still waiting for its page.

    Used as a context manager: on the way out the browser gets `page` (set when the sign-in
    worked) or says it did not, with the one-line reason, and the connection is closed.
    """

    def __init__(self, params: dict[str, str], repeated: bool, conn: socket.socket) -> None:
        self.params = params
        self.repeated = repeated  # a parameter appears twice: not an answer to trust
        self._conn = conn
        self.page = ""

    def __enter__(self) -> Redirect:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            text = self.page
        elif isinstance(exc, ConsentError):
            text = f"Sign-in not completed: {exc}. {CLOSE_TEXT}"
        else:
            text = f"Sign-in not completed: see the terminal. {CLOSE_TEXT}"
        try:
            _respond(self._conn, 200 if exc is None else 400, text)
        finally:
            self._conn.close()


class LoopbackListener:
    def __init__(self, port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a rerun right after one
        try:
            self._sock.bind((HOST, port))
            self._sock.listen(8)
        except OSError as exc:
            self._sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ConsentError(f"port {port} on {HOST} is in use: choose another --port (or "
                                   "leave --port out for any free port)") from None
            raise ConsentError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}") from None
        self.port = self._sock.getsockname()[1]

    @property
    def redirect_uri(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def __enter__(self) -> LoopbackListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def wait(self, deadline: float) -> Redirect | None:
        """The provider's answer, or None once the monotonic `deadline` passed."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                continue
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue  # the client gave up between select and accept
            redirect = self._read_one(conn, deadline)
            if redirect is not None:
                return redirect

    def _read_one(self, conn: socket.socket, deadline: float) -> Redirect | None:
        try:
            target = _request_target(conn, min(time.monotonic() + CLIENT_TIMEOUT, deadline))
            if target is None:
                _respond(conn, 400, "Not an HTTP request this address understands.")
                conn.close()
                return None
            parts = urlsplit(target)
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            params = dict(pairs)
            if parts.path != "/" or not ({"code", "error"} & set(params)):
                _respond(conn, 404, "This address waits for the sign-in's answer only.")
                conn.close()
                return None
        except OSError:
            conn.close()
            return None
        return Redirect(params, repeated=len(params) != len(pairs), conn=conn)


def _request_target(conn: socket.socket, until: float) -> str | None:
    """The target of a GET request read from conn by `until`, None if it is something else."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) <= MAX_REQUEST:
        left = until - time.monotonic()
        if left <= 0:
            return None
        conn.settimeout(left)
        try:
            chunk = conn.recv(4096)
        except socket.timeout:
            return None
        if not chunk:
            break
        data += chunk
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    words = line.split(" ")
    if len(words) != 3 or words[0] != "GET" or not words[2].startswith("HTTP/1."):
        return None
    return words[1]


def _respond(conn: socket.socket, status: int, text: str) -> None:
    body = (text + "\n").encode("utf-8")
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
    try:
        conn.settimeout(CLIENT_TIMEOUT)
        conn.sendall(head.encode("ascii") + body)
    except OSError:
        pass  # the browser went away; the terminal says what happened
