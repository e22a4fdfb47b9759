"""Handlers that misuse their process's pipe to the supervisor (importable as tests.harness.ipc_handlers)."""
from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

from tenant_proc.handlers import jsonl


def partial_frame_then_stall(email, context) -> None:
    """On a subject with PARTIAL, the first time only: write the header of a 200-byte frame and
    half of its payload (options["partial"] = "header": the 4-byte header alone) onto the
    tenant's pipe to the supervisor, then SIGSTOP this process (a child stalled half-way through
    a frame, as a bug or a handler writing to the pipe fd can leave it). The retry after the
    restart hands the email to jsonl like any other."""
    if "PARTIAL" in (email.subject or ""):
        marker = Path(context.options["marker_dir"]) / f"{email.tenant_id}-{email.uid}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
            conn = context.keepalive.__self__.conn  # the tenant's Control pipe (bound method)
            data = struct.pack("!i", 200)
            if context.options.get("partial") != "header":
                data += b'{"type":"heartbeat",' + b" " * 80
            os.write(conn.fileno(), data)
            os.kill(os.getpid(), signal.SIGSTOP)
    jsonl(email, context)
