"""ControlServer in-process: the command table, refusals, and a state_dir longer than sun_path."""
from __future__ import annotations

import os
import selectors
import threading

import pytest

from supervisor.service.control import (
    SUN_PATH_MAX,
    CommandError,
    ControlServer,
    ControlUnavailable,
    request,
)


def serve_while(server: ControlServer, selector: selectors.BaseSelector, call) -> object:
    """Run call() in a thread (the client) while this thread serves, as the arbiter's loop does."""
    result: dict[str, object] = {}

    def client() -> None:
        try:
            result["value"] = call()
        except Exception as exc:  # handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    while thread.is_alive():
        ready = {key.fileobj for key, _ in selector.select(0.05)}
        server.serve(ready)
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]


def test_commands_refusals_and_a_long_state_dir(tmp_path):
    state_dir = tmp_path / ("d" * 60) / ("e" * 60)
    state_dir.mkdir(parents=True)
    assert len(str(state_dir / "control.sock")) > SUN_PATH_MAX  # too long for a plain bind

    def refuse(request_: dict) -> object:
        raise CommandError(f"cannot retry {request_.get('tenant')}")

    selector = selectors.DefaultSelector()
    commands = {"status": lambda r: {"tenants": {}}, "retry": refuse}  # a new command: one entry
    server = ControlServer(state_dir, selector, commands)
    try:
        assert os.stat(state_dir / "control.sock").st_mode & 0o777 == 0o600
        assert serve_while(server, selector, lambda: request(state_dir, "status")) == {"tenants": {}}
        with pytest.raises(CommandError, match="cannot retry acme"):
            serve_while(server, selector, lambda: request(state_dir, "retry", tenant="acme"))
        with pytest.raises(CommandError, match="unknown command 'nope'; known: retry, status"):
            serve_while(server, selector, lambda: request(state_dir, "nope"))
    finally:
        server.close()
    assert not (state_dir / "control.sock").exists()
    with pytest.raises(ControlUnavailable):
        request(state_dir, "status", timeout=2)


def test_silent_clients_at_the_cap_make_room_for_a_real_request(tmp_path):
    """More silent connections than the cap: the oldest silent one is dropped for a newcomer,
    so `status` still gets through (it used to be told "busy" until their deadlines)."""
    import socket

    from supervisor.service.control import MAX_CONNECTIONS

    selector = selectors.DefaultSelector()
    server = ControlServer(tmp_path, selector, {"status": lambda r: "live"})
    silent = []
    try:
        for _ in range(MAX_CONNECTIONS + 4):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(tmp_path / "control.sock"))
            silent.append(sock)
            server.serve({key.fileobj for key, _ in selector.select(0.05)})
        assert serve_while(server, selector, lambda: request(tmp_path, "status")) == "live"
        assert len(server.exchanges.clients) <= MAX_CONNECTIONS
        silent[0].settimeout(5)
        assert silent[0].recv(100) == b""  # the oldest was dropped, without an answer
    finally:
        for sock in silent:
            sock.close()
        server.close()
