"""The process title: `top` shows the 15-byte kernel name, so the company name goes first."""
from __future__ import annotations

import setproctitle

COMM_BYTES = 15  # TASK_COMM_LEN - 1: what the kernel keeps of a task name


def cut_utf8(text: str, limit: int = COMM_BYTES) -> str:
    """The longest prefix of text whose UTF-8 encoding fits in limit bytes, never half a char."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def format_title(name: str, state: str) -> str:
    return f"{name} [{state}] idle-supervisor"


def set_title(name: str, state: str) -> None:
    setproctitle.setproctitle(format_title(name, state))
    # setproctitle also sets comm, but the kernel cuts it at a byte, which can split "Å" and
    # leave invalid UTF-8 in ps/top; set the name ourselves, cut at a character boundary.
    # For the main thread this is /proc/PID/comm itself.
    setproctitle.setthreadtitle(cut_utf8(name))
