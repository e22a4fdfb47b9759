"""A fault-injecting IMAP proxy for tests: between a tenant and Dovecot's plain-text port, it
misbehaves as servers in the field do, for a chosen UID.

    with FaultProxy((dovecot.host, dovecot.imap_port)) as proxy:    # tenant: plain, port=proxy.port
        proxy.refuse_fetch(2, "NO")          # every body FETCH naming UID 2 answered NO (or "BAD")
        proxy.throttle_fetch(2, 1500, times=2)  # NO [THROTTLED] ... Suggested Backoff Time: 1500 ms
        proxy.garble_fetch(2)                # an untagged FETCH imapclient cannot parse, then OK
        proxy.junk_fetch(2)                  # a line no IMAP client can read (the session breaks)
        proxy.drop_body(2)                   # the FETCH answer for UID 2 comes without BODY[]
        proxy.drop_uid(2)                    # the FETCH answer leaves UID 2 out (SEARCH still finds it)
        proxy.drop_uid(2, expunged=True)     # ... and UID SEARCH does not find it either
        proxy.trickle_fetch(2, chunk=200, delay=0.1)  # the body FETCH's answer, 200 bytes at a time

Rules apply to body FETCHes (`BODY.PEEK[...]`, the survey's prefetch included) whose UID set
names the UID, `times` times (None: forever). A refused or garbled command is sent to the
server as NOOP, so tagged answers keep their order in a pipeline. Answers are cut into whole
responses (literals included) before any rule looks at them.

Scripted answers, as a provider gives them, for any command:

        proxy.script("LOGIN", "NO [ALERT] Too many simultaneous connections. (Failure)", times=2)
        proxy.script("SELECT", "BAD User is authenticated but not connected.")   # for good
        proxy.script("FETCH", "NO [OVERQUOTA] Account exceeded command or bandwidth limits.",
                     uid=2, seconds=3)                    # the body FETCH of UID 2, for 3 s
        proxy.script("SURVEY", "NO Request is throttled. Suggested Backoff Time: 3000 milliseconds",
                     bye="Connection closed. 14", times=1)  # then BYE, and the connection closes
        proxy.script("IDLE", "* BYE System Error")        # an untagged BYE instead, then closed

Commands: "LOGIN" (LOGIN and AUTHENTICATE), "SELECT" (SELECT and EXAMINE), "FETCH" (a body
FETCH, the survey's prefetch included; `uid` narrows it), "SURVEY" (`UID FETCH n:*
(RFC822.SIZE)`), "FETCH SIZES" (any other FETCH without a body), or any other command name
("IDLE", "LIST", "STATUS"). The answer is a tagged
"NO ..."/"BAD ..." or an untagged "* BYE ..." (the connection then closes); `bye` adds a BYE after
a tagged answer, `close` closes without one. `times` uses (None: forever) and `seconds` from now
(None: no end), whichever ends first; the first matching script wins. The command goes to the
server as NOOP, so pipelined answers keep their order.

Counters: `logins` (LOGIN and AUTHENTICATE commands seen) and `login_times` (their monotonic
times), `fetches_hit` (commands a fetch rule changed), `scripts_hit` (commands a script
answered), `fetch_commands` (all UID FETCH lines).
"""
from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any

from tests.servers.proxies.fault_rules import FETCH_CMD, SCRIPT_ALIASES, Rule, script_name, uid_set_names
from tests.servers.proxies.tcp_proxy import POLL, TcpProxy, _Link

__all__ = ["FaultLink", "FaultProxy", "Rule", "uid_set_names"]

LITERAL_END = re.compile(rb"\{(\d+)\}\r\n$")
SEARCH_CMD = re.compile(rb"^(\S+) UID SEARCH UID (\d+)$", re.IGNORECASE)
FETCH_UID = re.compile(rb"^\* \d+ FETCH \(.*?\bUID (\d+)\b", re.DOTALL)
BODY_ITEM = re.compile(rb" ?BODY\[[^\]]*\](?:<\d+>)? \{(\d+)\}\r\n")


class FaultLink(_Link):
    """One connection: commands rewritten on the way up, whole responses filtered on the way down."""

    def __init__(self, proxy: "FaultProxy", client: socket.socket, upstream: socket.socket) -> None:
        super().__init__(proxy, client, upstream)
        self.fproxy = proxy
        self.pending: dict[bytes, Rule] = {}  # tag -> the rule that rewrote that command
        self.trickling: dict[bytes, Rule] = {}  # tag -> trickle until its tagged answer
        self.down_buffer = b""
        self.up_buffer = b""
        self.lock = threading.Lock()
        self.closing = False  # a scripted answer ends the connection once it is sent

    def start(self) -> None:
        threading.Thread(target=self._up, daemon=True).start()
        threading.Thread(target=self._down, daemon=True).start()

    def _recv(self, sock: socket.socket) -> bytes | None:
        """Bytes, b"" on EOF, None when nothing came in POLL."""
        if self.proxy.frozen.is_set():
            time.sleep(POLL)
            return None
        try:
            return sock.recv(65536)
        except socket.timeout:
            return None

    def _up(self) -> None:
        self.client.settimeout(POLL)
        try:
            while not self.closed.is_set():
                data = self._recv(self.client)
                if data is None:
                    continue
                if not data:
                    break
                self.up_buffer += data
                *lines, self.up_buffer = self.up_buffer.split(b"\r\n")
                out = b"".join(self._command(line) + b"\r\n" for line in lines)
                if out:
                    self.upstream.sendall(out)
        except OSError:
            pass
        self.close()

    def _command(self, line: bytes) -> bytes:
        proxy = self.fproxy
        upper = line.upper()
        if b" LOGIN " in upper or b" AUTHENTICATE " in upper:
            proxy.logins += 1
            proxy.login_times.append(time.monotonic())
        match = FETCH_CMD.match(line)
        if match is not None:
            proxy.fetch_commands.append(line)
        scripted = self._script(line, match)
        if scripted is not None:
            return scripted
        if match is None:
            search = SEARCH_CMD.match(line)
            rule = search and proxy.rule_for("drop_uid", int(search.group(2)), consume=False)
            if rule and rule.expunged:
                return search.group(1) + b" UID SEARCH UID 4294967295"  # nothing has that UID
            return line
        tag, uid_set, items = match.groups()
        if b"BODY.PEEK[" not in items.upper():
            return line
        for kind in ("refuse", "throttle", "garble", "junk", "trickle", "drop_body", "drop_uid"):
            if kind == "trickle" and b"]<" in items:
                continue  # trickle the email's own FETCH, not the survey's prefetch of it
            rule = proxy.rule_for(kind, None, uid_set)
            if rule is None:
                continue
            proxy.fetches_hit += 1
            with self.lock:
                if kind == "trickle":
                    self.trickling[tag] = rule
                elif kind in ("refuse", "throttle", "garble", "junk"):
                    self.pending[tag] = rule
                    return tag + b" NOOP"
                else:
                    self.pending[tag] = rule
            return line
        return line

    def _script(self, line: bytes, fetch: re.Match[bytes] | None) -> bytes | None:
        """The NOOP sent instead of a command a script answers (None: no script for it)."""
        name = script_name(line, fetch)
        if name is None:
            return None
        rule = self.fproxy.script_for(name, fetch.group(2) if fetch is not None else None)
        if rule is None:
            return None
        tag = line.split(b" ", 1)[0]
        with self.lock:
            self.pending[tag] = rule
        return tag + b" NOOP"

    def _down(self) -> None:
        self.upstream.settimeout(POLL)
        try:
            while not self.closed.is_set():
                data = self._recv(self.upstream)
                if data is None:
                    continue
                if not data:
                    break
                self.down_buffer += data
                for response in self._whole_responses():
                    self._send_down(response)
                    if self.closing:
                        self.close()
                        return
        except OSError:
            pass
        self.close()

    def _whole_responses(self) -> list[bytes]:
        """Cut the buffer into complete responses (a line, its literals, their continuations)."""
        out = []
        while True:
            end, pos, buf = None, 0, self.down_buffer
            while True:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                literal = LITERAL_END.search(buf, pos, nl + 2)
                if literal is None:
                    end = nl + 2
                    break
                pos = nl + 2 + int(literal.group(1))
                if pos > len(buf):
                    break
            if end is None:
                return out
            out.append(buf[:end])
            self.down_buffer = buf[end:]

    def _send_down(self, response: bytes) -> None:
        with self.lock:
            response = self._filter(response)
            trickle = next(iter(self.trickling.values()), None)
            if trickle is not None and any(response.startswith(t + b" ") for t in self.trickling):
                self.trickling = {t: r for t, r in self.trickling.items() if not response.startswith(t + b" ")}
        if trickle is None:
            self.client.sendall(response)
            return
        for start in range(0, len(response), trickle.chunk):
            self.client.sendall(response[start:start + trickle.chunk])
            time.sleep(trickle.delay)

    def _filter(self, response: bytes) -> bytes:
        for tag, rule in list(self.pending.items()):
            if response.startswith(tag + b" "):  # the tagged answer of a rewritten command
                del self.pending[tag]
                if rule.kind == "script":
                    return self._scripted(tag, rule)
                return self._tagged(tag, rule, response)
        uid_match = FETCH_UID.match(response)
        if uid_match is not None and b"BODY[" in response:
            uid = int(uid_match.group(1))
            for rule in self.pending.values():
                if rule.uid != uid:
                    continue
                if rule.kind == "drop_uid":
                    return b""
                if rule.kind == "drop_body":
                    return _without_bodies(response)
        return response

    @staticmethod
    def _tagged(tag: bytes, rule: Rule, response: bytes) -> bytes:
        if rule.kind == "refuse":
            return tag + f" {rule.answer} [SERVERBUG] fault proxy refuses this FETCH\r\n".encode()
        if rule.kind == "throttle":
            return tag + (f" NO [THROTTLED] Request is throttled. Suggested Backoff Time: "
                          f"{rule.backoff_ms} milliseconds\r\n").encode()
        if rule.kind == "garble":
            return f"* 1 FETCH (UID {rule.uid} BODY[] ((garbage\r\n".encode() + response
        if rule.kind == "junk":
            return b"%%% this is not IMAP %%%\r\n" + response
        return response  # drop_body / drop_uid: the answer itself was edited on its way

    def _scripted(self, tag: bytes, rule: Rule) -> bytes:
        """A script's answer in place of the NOOP's; marks the link for closing when it ends it."""
        if rule.answer.startswith("* "):
            self.closing = True
            return f"{rule.answer}\r\n".encode()
        answer = tag + f" {rule.answer}\r\n".encode()
        if rule.bye is not None:
            answer += f"* BYE {rule.bye}\r\n".encode()
        self.closing = rule.bye is not None or rule.close
        return answer


def _without_bodies(response: bytes) -> bytes:
    while True:
        match = BODY_ITEM.search(response)
        if match is None:
            return response
        response = response[:match.start()] + response[match.end() + int(match.group(1)):]


class FaultProxy(TcpProxy):
    link_class = FaultLink

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        super().__init__(upstream, host)
        self.rules: list[Rule] = []
        self.logins = 0
        self.login_times: list[float] = []
        self.fetches_hit = 0
        self.scripts_hit = 0
        self._rules_lock = threading.Lock()

    def rule_for(self, kind: str, uid: int | None, uid_set: bytes | None = None, consume: bool = True,
                 expunged: bool | None = None) -> Rule | None:
        with self._rules_lock:
            for rule in self.rules:
                if rule.kind != kind or (uid is not None and rule.uid != uid):
                    continue
                if uid_set is not None and not uid_set_names(uid_set, rule.uid):
                    continue
                if expunged is not None and rule.expunged != expunged:
                    continue
                if rule.times is not None and rule.times <= 0:
                    continue
                if consume:
                    rule.use()
                return rule
        return None

    def script_for(self, name: str, uid_set: bytes | None) -> Rule | None:
        """The first live script for this command (and UID set, for a body FETCH), used once."""
        with self._rules_lock:
            for rule in self.rules:
                if rule.kind != "script" or rule.command != name or not rule.live():
                    continue
                if rule.uid and (uid_set is None or not uid_set_names(uid_set, rule.uid)):
                    continue
                rule.use()
                rule.fired.append(time.monotonic())
                self.scripts_hit += 1
                return rule
        return None

    def _add(self, **fields: Any) -> Rule:
        rule = Rule(**fields)
        with self._rules_lock:
            self.rules.append(rule)
        return rule

    def refuse_fetch(self, uid: int, answer: str = "NO", times: int | None = None) -> Rule:
        return self._add(kind="refuse", uid=uid, times=times, answer=answer)

    def throttle_fetch(self, uid: int, backoff_ms: int, times: int | None = None) -> Rule:
        return self._add(kind="throttle", uid=uid, times=times, backoff_ms=backoff_ms)

    def garble_fetch(self, uid: int, times: int | None = None) -> Rule:
        return self._add(kind="garble", uid=uid, times=times)

    def junk_fetch(self, uid: int, times: int | None = None) -> Rule:
        return self._add(kind="junk", uid=uid, times=times)

    def drop_body(self, uid: int, times: int | None = None) -> Rule:
        return self._add(kind="drop_body", uid=uid, times=times)

    def drop_uid(self, uid: int, expunged: bool = False, times: int | None = None) -> Rule:
        return self._add(kind="drop_uid", uid=uid, times=times, expunged=expunged)

    def trickle_fetch(self, uid: int, chunk: int = 200, delay: float = 0.1, times: int | None = 1) -> Rule:
        return self._add(kind="trickle", uid=uid, times=times, chunk=chunk, delay=delay)

    def script(self, command: str, answer: str, *, times: int | None = None, seconds: float | None = None,
               uid: int = 0, bye: str | None = None, close: bool = False) -> Rule:
        """Answer `command` as a provider does (module docstring): a tagged "NO ..."/"BAD ..."
        or an untagged "* BYE ...", `times` times and/or for `seconds`."""
        name = SCRIPT_ALIASES.get(command.upper(), command.upper())
        until = None if seconds is None else time.monotonic() + seconds
        return self._add(kind="script", uid=uid, times=times, answer=answer, command=name, bye=bye,
                         close=close, until=until)

    def clear(self) -> None:
        with self._rules_lock:
            self.rules.clear()
