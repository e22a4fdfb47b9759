"""IMAP proxies that answer as Exchange Online or as Gmail, in front of the test Dovecot.

    with ProviderProxy((dovecot.host, dovecot.imap_port), "exchange") as proxy:  # or "gmail"
        ...                                   # tenant: security = "plain", port = proxy.port
        proxy.hide_uid(2, user="alice")               # FETCH never returns UID 2; SEARCH lists it
        proxy.hide_uid(2, user="alice", seconds=5)    # ... for 5 s from now
        proxy.reveal_uid(2)                           # served again
        proxy.exists_before_continuation("alice")    # new mail announced before `+ IDLE accepted`

Manners (what every connection gets), from what the providers send (the design notes §6,
issue 21):
- the greeting, and CAPABILITY exactly as the provider lists it: Exchange
  `IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE
  NAMESPACE LITERAL+` (no CONDSTORE, QRESYNC, ESEARCH); Gmail, once logged in, `IMAP4rev1
  UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS COMPRESS=DEFLATE ENABLE MOVE
  CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE
  APPENDLIMIT=35651584`, and before login the list Gmail sends then (with its AUTH= mechanisms).
  Dovecot's own `[CAPABILITY ...]` response codes are dropped (neither provider sends them), so
  a client sees only the provider's list. Dovecot lacks some of these (COMPRESS, XLIST,
  X-GM-EXT-1): `commands` records every command a client sent, so a test can show ours never
  uses them;
- the IDLE continuation: Exchange `+ IDLE accepted, awaiting DONE command.`, Gmail `+ idling`.

Behaviours, each switched on per mailbox (the LOGIN user; None: every mailbox):
- hide_uid: Exchange announces a UID and lists it in UID SEARCH, but leaves it out of every
  FETCH answer for minutes, or for good (imapclient#441, EmailEngine#53, MailKit#1615): every
  untagged FETCH response naming that UID is dropped, the size survey's included;
- exists_before_continuation: Outlook's notifications lag and come out when the next IDLE
  starts, before its continuation (php-imap#258): EXISTS/RECENT that Dovecot sends while the
  client idles are held and sent just before the next IDLE's continuation;
- the same message appended twice (a Gmail label added again, a drag out of the inbox and back):
  Dovecot's own APPEND, nothing for the proxy to do.

The scripted refusals of FaultProxy (refuse_fetch, throttle_fetch, ...) work here too.
"""
from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass

from tests.servers.proxies.fault_proxy import FETCH_UID, FaultLink, FaultProxy

EXCHANGE_CAPABILITIES = (b"IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT "
                         b"CHILDREN IDLE NAMESPACE LITERAL+")
GMAIL_CAPABILITIES = (b"IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS "
                      b"COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED "
                      b"LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584")
GMAIL_CAPABILITIES_BEFORE_LOGIN = (b"IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN "
                                   b"X-GM-EXT-1 XYZZY SASL-IR AUTH=XOAUTH2 AUTH=PLAIN "
                                   b"AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER AUTH=XOAUTH")


@dataclass(frozen=True)
class Manner:
    greeting: bytes
    capabilities: bytes  # once logged in
    capabilities_before_login: bytes
    idle_continuation: bytes


MANNERS = {
    "exchange": Manner(
        greeting=b"* OK The Microsoft Exchange IMAP4 service is ready. "
                 b"[TQBXADIAUABSADAAMQBDAEEAMAAwADEANgAuAGUAdQByAHAAcgBkADAAMQAuAHAAcgBvAGQA]\r\n",
        capabilities=EXCHANGE_CAPABILITIES,
        capabilities_before_login=EXCHANGE_CAPABILITIES,
        idle_continuation=b"+ IDLE accepted, awaiting DONE command.\r\n",
    ),
    "gmail": Manner(
        greeting=b"* OK Gimap ready for requests from 127.0.0.1 q12mb34567890abc\r\n",
        capabilities=GMAIL_CAPABILITIES,
        capabilities_before_login=GMAIL_CAPABILITIES_BEFORE_LOGIN,
        idle_continuation=b"+ idling\r\n",
    ),
}

CAPABILITY_CODE = re.compile(rb"\[CAPABILITY [^\]]*\] ?")
CAPABILITY_LINE = re.compile(rb"^\* CAPABILITY .*\r\n$", re.IGNORECASE | re.DOTALL)
ANNOUNCEMENT = re.compile(rb"^\* \d+ (EXISTS|RECENT)\r\n$", re.IGNORECASE)
LOGIN_CMD = re.compile(rb"^(\S+) (LOGIN|AUTHENTICATE) ?(\S*)", re.IGNORECASE)
COMMAND_NAME = re.compile(rb"^\S+ (UID )?([A-Za-z]+)", re.IGNORECASE)


@dataclass
class Hidden:
    uid: int
    user: str | None
    until: float | None  # monotonic; None: for good


class ProviderLink(FaultLink):
    """One connection in the provider's manner: commands watched on the way up, answers rewritten
    on the way down (after FaultLink's own rules)."""

    def __init__(self, proxy: "ProviderProxy", client: socket.socket, upstream: socket.socket) -> None:
        super().__init__(proxy, client, upstream)
        self.provider = proxy
        self.greeted = False
        self.user: str | None = None
        self.login_tag: bytes | None = None
        self.logged_in = False
        self.idle_tag: bytes | None = None  # an IDLE sent, its continuation not yet seen
        self.idling = False
        self.held: list[bytes] = []  # announcements kept back until the next IDLE starts
        self.state_lock = threading.Lock()

    def _command(self, line: bytes) -> bytes:
        out = super()._command(line)
        proxy = self.provider
        name = COMMAND_NAME.match(line)
        with self.state_lock:
            if line.strip().upper() == b"DONE":
                self.idling = False
                proxy.commands.append(b"DONE")
            elif name is not None:
                proxy.commands.append(name.group(2).upper())
            login = LOGIN_CMD.match(line)
            if login is not None:
                self.login_tag = login.group(1)
                if login.group(2).upper() == b"LOGIN":
                    self.user = login.group(3).strip(b'"').decode("utf-8", "replace")
            elif name is not None and name.group(2).upper() == b"IDLE":
                self.idle_tag = line.split(b" ", 1)[0]
        return out

    def _filter(self, response: bytes) -> bytes:
        response = super()._filter(response)
        if not response:
            return response
        manner = self.provider.manner
        with self.state_lock:
            if not self.greeted:
                self.greeted = True
                return manner.greeting
            if self.login_tag is not None and response.startswith(self.login_tag + b" "):
                self.logged_in = response[len(self.login_tag) + 1:].upper().startswith(b"OK")
                self.login_tag = None
            if CAPABILITY_LINE.match(response):
                listed = manner.capabilities if self.logged_in else manner.capabilities_before_login
                return b"* CAPABILITY " + listed + b"\r\n"
            response = CAPABILITY_CODE.sub(b"", response)
            if self.idle_tag is not None and response.startswith(self.idle_tag + b" "):
                self.idle_tag = None  # IDLE refused: no continuation coming
            if response.startswith(b"+") and self.idle_tag is not None:
                self.idle_tag, self.idling = None, True
                held, self.held = self.held, []
                return b"".join(held) + manner.idle_continuation
            if (self.idling and ANNOUNCEMENT.match(response)
                    and self.provider.lagging(self.user)):
                self.held.append(response)
                return b""
        uid = FETCH_UID.match(response)
        if uid is not None and self.provider.hides(int(uid.group(1)), self.user):
            self.provider.fetches_hidden += 1
            return b""
        return response


class ProviderProxy(FaultProxy):
    link_class = ProviderLink

    def __init__(self, upstream: tuple[str, int], manner: str, host: str = "127.0.0.1") -> None:
        super().__init__(upstream, host)
        self.manner_name = manner
        self.manner = MANNERS[manner]
        self.commands: list[bytes] = []  # every command name clients sent (UID FETCH -> FETCH)
        self.fetches_hidden = 0  # FETCH responses dropped by hide_uid
        self._hidden: list[Hidden] = []
        self._lagging: set[str | None] = set()
        self._behaviour_lock = threading.Lock()

    # ---- behaviours ----------------------------------------------------------------------

    def hide_uid(self, uid: int, user: str | None = None, seconds: float | None = None) -> None:
        until = None if seconds is None else time.monotonic() + seconds
        with self._behaviour_lock:
            self._hidden.append(Hidden(uid, user, until))

    def reveal_uid(self, uid: int) -> None:
        with self._behaviour_lock:
            self._hidden = [h for h in self._hidden if h.uid != uid]

    def hides(self, uid: int, user: str | None) -> bool:
        now = time.monotonic()
        with self._behaviour_lock:
            return any(h.uid == uid and h.user in (None, user) and (h.until is None or now < h.until)
                       for h in self._hidden)

    def exists_before_continuation(self, user: str | None = None) -> None:
        with self._behaviour_lock:
            self._lagging.add(user)

    def lagging(self, user: str | None) -> bool:
        with self._behaviour_lock:
            return None in self._lagging or user in self._lagging

    def commands_used(self) -> set[bytes]:
        return set(self.commands)
