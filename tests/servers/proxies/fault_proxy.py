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
responses (literals included) before any rule looks at them. Counters: `logins` (LOGIN
commands seen), `fetches_hit` (commands a rule changed), `fetch_commands` (all FETCH lines).
"""
from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from tests.servers.proxies.tcp_proxy import POLL, TcpProxy, _Link

LITERAL_END = re.compile(rb"\{(\d+)\}\r\n$")
FETCH_CMD = re.compile(rb"^(\S+) UID FETCH (\S+) \((.*)\)$", re.IGNORECASE)
SEARCH_CMD = re.compile(rb"^(\S+) UID SEARCH UID (\d+)$", re.IGNORECASE)
FETCH_UID = re.compile(rb"^\* \d+ FETCH \(.*?\bUID (\d+)\b", re.DOTALL)
BODY_ITEM = re.compile(rb" ?BODY\[[^\]]*\](?:<\d+>)? \{(\d+)\}\r\n")


@dataclass
class Rule:
    kind: str  # refuse | throttle | garble | junk | drop_body | drop_uid | trickle
    uid: int
    times: int | None
    answer: str = "NO"
    backoff_ms: int = 0
    expunged: bool = False
    chunk: int = 200
    delay: float = 0.1

    def use(self) -> bool:
        if self.times is not None:
            if self.times <= 0:
                return False
            self.times -= 1
        return True


def uid_set_names(uid_set: bytes, uid: int) -> bool:
    for part in uid_set.split(b","):
        low, _, high = part.partition(b":")
        if b"*" in part:
            continue  # n:* is the size survey: never a body FETCH here
        if int(low) <= uid <= int(high or low):
            return True
    return False


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
        if b" LOGIN " in line.upper():
            proxy.logins += 1
        match = FETCH_CMD.match(line)
        if match is None:
            search = SEARCH_CMD.match(line)
            rule = search and proxy.rule_for("drop_uid", int(search.group(2)), consume=False)
            if rule and rule.expunged:
                return search.group(1) + b" UID SEARCH UID 4294967295"  # nothing has that UID
            return line
        proxy.fetch_commands.append(line)
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
        self.fetches_hit = 0
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

    def clear(self) -> None:
        with self._rules_lock:
            self.rules.clear()
