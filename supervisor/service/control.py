"""The control socket: `state_dir/control.sock` (0600), a live answer from the running supervisor.

The supervisorctl way: `idle-supervisor status`, `reload` and `stop` talk to the supervisor
itself instead of reading a file that lags events. Served from the arbiter's one loop, without
ever waiting on a client (supervisor/service/exchanges.py: non-blocking, a request bounded in
size, a connection in time and the number of connections in count).

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
from pathlib import Path
from typing import Any, Callable

import orjson

from supervisor.service.exchanges import Exchanges, Limits

log = logging.getLogger("supervisor.control")

SOCKET_FILE = "control.sock"
MAX_REQUEST_BYTES = 4096  # a request is a command name and a few arguments
CONNECTION_DEADLINE = 5.0  # the whole exchange, read and write (a status of 1,000 tenants included)
MAX_CONNECTIONS = 16  # beyond this the oldest silent client is dropped, or a newcomer told "busy"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the terminating NUL

Command = Callable[[dict[str, Any]], Any]


class CommandError(Exception):
    """A command refused (bad arguments, wrong phase): becomes {"ok": false, "error": ...}."""


class ControlUnavailable(Exception):
    """No supervisor answered on the socket (none runs, a stale file, a timeout)."""


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
        self.commands = commands
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
        limits = Limits(max_request=MAX_REQUEST_BYTES, deadline=CONNECTION_DEADLINE,
                        max_connections=MAX_CONNECTIONS,
                        too_large=_reply_error(f"request larger than {MAX_REQUEST_BYTES} bytes"),
                        busy=_reply_error("busy: too many control connections"))
        self.exchanges = Exchanges("control socket", self.sock, selector, self._respond, limits, log)

    def serve(self, ready: set[Any]) -> None:
        """Accept, read, answer and write what is ready; drop clients past their deadline."""
        self.exchanges.serve(ready)

    def next_deadline(self) -> float:
        return self.exchanges.next_deadline()

    def close(self) -> None:
        self.exchanges.close()
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _respond(self, request: bytes) -> bytes | None:
        line, newline, _ = request.partition(b"\n")
        return self._answer(line) if newline else None

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
