"""The control socket: `state_dir/control.sock` (0600), a live answer from the running supervisor.

The supervisorctl way: `idle-supervisor status`, `reload` and `stop` talk to the supervisor
itself instead of reading a file that lags events. Served from the arbiter's one loop (the
parent forks, so no thread): the listening socket and every accepted connection are
non-blocking and sit in the arbiter's selector; a request is bounded in size, a connection in
time and the number of connections in count, so a stuck or hostile client can neither block
the loop nor grow its memory.

Protocol (one exchange per connection): the client sends one line, a JSON object
`{"command": "status"}` + "\\n"; the server answers one line, `{"ok": true, "result": ...}` or
`{"ok": false, "error": "..."}` + "\\n", and closes. New commands are one entry in the table
the arbiter passes in (name -> function of the request object returning the result).
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

log = logging.getLogger("supervisor.control")

SOCKET_FILE = "control.sock"
MAX_REQUEST_BYTES = 4096  # a request is a command name and a few arguments
CONNECTION_DEADLINE = 5.0  # the whole exchange, read and write (a status of 1,000 tenants included)
MAX_CONNECTIONS = 16  # beyond this a new client is answered "busy" and closed at once
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL

Command = Callable[[dict[str, Any]], Any]


class CommandError(Exception):
    """A command refused (bad arguments, wrong phase): becomes {"ok": false, "error": ...}."""


class ControlUnavailable(Exception):
    """No supervisor answered on the socket (none runs, a stale file, a timeout)."""


@dataclass(eq=False)  # hashed by identity: it sits in the selector's ready sets
class _Client:
    sock: socket.socket
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""
    sent: int = 0

    def fileno(self) -> int:
        return self.sock.fileno()


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_FILE


def _address(path: Path, dir_fd: int | None) -> str:
    """The path, or (when it is too long for sun_path) the same file reached through
    /proc/self/fd/N of its directory, which is short whatever state_dir is."""
    if dir_fd is None:
        return str(path)
    return f"/proc/self/fd/{dir_fd}/{path.name}"


def _open_dir_if_long(path: Path) -> int | None:
    if len(os.fsencode(str(path))) <= SUN_PATH_MAX:
        return None
    return os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class ControlServer:
    def __init__(self, state_dir: Path, selector: selectors.BaseSelector,
                 commands: dict[str, Command]) -> None:
        """Call only while holding the pid-file lock: whatever socket file is there then is a
        leftover of a supervisor that died (SIGKILL leaves it), so it is replaced."""
        self.path = socket_path(state_dir)
        self.selector = selector
        self.commands = commands
        self.clients: dict[int, _Client] = {}
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dir_fd = _open_dir_if_long(self.path)
        old_umask = os.umask(0o177)  # created 0600: the socket can stop the supervisor
        try:
            self.sock.bind(_address(self.path, dir_fd))
        finally:
            os.umask(old_umask)
            if dir_fd is not None:
                os.close(dir_fd)
        self.sock.listen(MAX_CONNECTIONS)
        self.sock.setblocking(False)
        selector.register(self.sock, selectors.EVENT_READ, None)

    def serve(self, ready: set[Any]) -> None:
        """Accept, read, answer and write what is ready; drop clients past their deadline."""
        now = time.monotonic()
        if self.sock in ready:
            self._accept(now)
        for client in list(self.clients.values()):
            if now >= client.deadline:
                self._close(client)
            elif client in ready:
                self._step(client)

    def next_deadline(self) -> float:
        return min((c.deadline for c in self.clients.values()), default=float("inf"))

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    # ---- one connection ----------------------------------------------------------------

    def _accept(self, now: float) -> None:
        for _ in range(MAX_CONNECTIONS):  # bounded: a flood of connects cannot hold the loop
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("control socket: accept failed: %s", exc)
                return
            conn.setblocking(False)
            client = _Client(conn, now + CONNECTION_DEADLINE)
            if len(self.clients) >= MAX_CONNECTIONS:
                client.outbox = _reply_error("busy: too many control connections")
                self._flush_and_close(client)
                continue
            self.clients[client.fileno()] = client
            self.selector.register(client, selectors.EVENT_READ, None)

    def _step(self, client: _Client) -> None:
        if client.outbox:
            self._write(client)
            return
        try:
            chunk = client.sock.recv(MAX_REQUEST_BYTES + 1 - len(client.inbox))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        if not chunk:
            self._close(client)  # gone before a full request: nothing to answer
            return
        client.inbox += chunk
        line, newline, _ = bytes(client.inbox).partition(b"\n")
        if newline:
            client.outbox = self._answer(line)
        elif len(client.inbox) > MAX_REQUEST_BYTES:
            client.outbox = _reply_error(f"request larger than {MAX_REQUEST_BYTES} bytes")
        else:
            return
        client.inbox.clear()
        self.selector.modify(client, selectors.EVENT_WRITE, None)
        self._write(client)

    def _answer(self, line: bytes) -> bytes:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            return _reply_error("request is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return _reply_error('request must be a JSON object with a "command" string')
        name = request["command"]
        command = self.commands.get(name)
        if command is None:
            return _reply_error(f"unknown command {name[:40]!r}; known: "
                                + ", ".join(sorted(self.commands)))
        try:
            result = command(request)
        except CommandError as exc:
            return _reply_error(str(exc))
        return orjson.dumps({"ok": True, "result": result}) + b"\n"

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


def _reply_error(message: str) -> bytes:
    return orjson.dumps({"ok": False, "error": message}) + b"\n"


# ---- the client side (the CLI) ----------------------------------------------------------

def request(state_dir: Path, command: str, timeout: float = 5.0, **arguments: Any) -> Any:
    """Send one command and return its result. Raises ControlUnavailable when nobody answers,
    CommandError when the supervisor refused the command."""
    path = socket_path(state_dir)
    deadline = time.monotonic() + timeout
    payload = orjson.dumps({"command": command, **arguments}) + b"\n"
    try:
        dir_fd = _open_dir_if_long(path)
    except OSError as exc:
        raise ControlUnavailable(f"{path.parent}: {exc.strerror or exc}") from None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(_address(path, dir_fd))
            sock.sendall(payload)
            answer = bytearray()
            while not answer.endswith(b"\n"):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except OSError as exc:  # ENOENT, ECONNREFUSED (a stale file), a timeout
        raise ControlUnavailable(f"{path}: {exc.strerror or exc}") from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        reply = orjson.loads(answer)
    except orjson.JSONDecodeError:
        raise ControlUnavailable(f"{path}: no complete answer") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlUnavailable(f"{path}: not a control answer")
    if not reply["ok"]:
        raise CommandError(str(reply.get("error")))
    return reply.get("result")
