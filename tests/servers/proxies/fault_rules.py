"""The fault proxy's rules (tests/servers/proxies/fault_proxy.py): what one rule does, and which
client command it applies to. Rule and uid_set_names are importable from fault_proxy too."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

FETCH_CMD = re.compile(rb"^(\S+) UID FETCH (\S+) \((.*)\)$", re.IGNORECASE)
COMMAND = re.compile(rb"^(\S+) (?:UID )?([A-Za-z]+)", re.IGNORECASE)
# A script for LOGIN answers AUTHENTICATE too, one for SELECT answers EXAMINE too.
SCRIPT_ALIASES = {"AUTHENTICATE": "LOGIN", "EXAMINE": "SELECT"}


@dataclass
class Rule:
    kind: str  # refuse | throttle | garble | junk | drop_body | drop_uid | trickle | script
    uid: int  # 0: any (scripts)
    times: int | None
    answer: str = "NO"
    backoff_ms: int = 0
    expunged: bool = False
    chunk: int = 200
    delay: float = 0.1
    command: str = ""  # script: LOGIN | SELECT | FETCH | SURVEY | any command name
    bye: str | None = None  # script: a BYE after the tagged answer, then the connection closes
    close: bool = False  # script: close after the answer
    until: float | None = None  # script: monotonic end
    fired: list[float] = field(default_factory=list)  # script: monotonic times it answered

    def use(self) -> bool:
        if not self.live():
            return False
        if self.times is not None:
            self.times -= 1
        return True

    def live(self) -> bool:
        if self.until is not None and time.monotonic() >= self.until:
            return False
        return self.times is None or self.times > 0


def script_name(line: bytes, fetch: re.Match[bytes] | None) -> str | None:
    """What a script calls this command: LOGIN, SELECT, FETCH (a body), SURVEY or its own name."""
    if fetch is not None:
        _, uid_set, items = fetch.groups()
        if b"BODY.PEEK[" in items.upper():
            return "FETCH"
        return "SURVEY" if uid_set.endswith(b":*") and b"RFC822.SIZE" in items.upper() else "FETCH SIZES"
    match = COMMAND.match(line)
    if match is None:
        return None
    name = match.group(2).decode().upper()
    return SCRIPT_ALIASES.get(name, name)


def uid_set_names(uid_set: bytes, uid: int) -> bool:
    for part in uid_set.split(b","):
        low, _, high = part.partition(b":")
        if b"*" in part:
            continue  # n:* is the size survey: never a body FETCH here
        if int(low) <= uid <= int(high or low):
            return True
    return False
