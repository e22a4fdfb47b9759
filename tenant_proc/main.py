"""The tenant process: bootstrap in the freshly forked child, run the session, exit with a code.

Exit codes (ipc.protocol): EXIT_OK clean stop, EXIT_AUTH wrong credentials, EXIT_CONFIG
something a restart cannot fix; any other code is a crash the supervisor restarts.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import NoReturn

from ipc import protocol
from tenant_proc.errors import FatalError
from tenant_proc.handlers.loader import HandlerError, load_handler
from tenant_proc.logs import describe_exception, tenant_logger
from tenant_proc.mail.mailbox import Mailbox
from tenant_proc.mail.replay import Replayer
from tenant_proc.process.control import Control
from tenant_proc.process.title import set_title
from tenant_proc.session.loop import Session
from tenant_proc.signin import login as signin
from tenant_proc.spec import TenantSpec
from tenant_proc.store.api import LeaseLost, UnsafeStateFile
from tenant_proc.store.backend import open_store

EXIT_CRASH = 1
PR_SET_PDEATHSIG = 1


def run_tenant(spec: TenantSpec, conn: Connection, parent_pid: int,
               shutdown_fd: int | None = None) -> NoReturn:
    """shutdown_fd: the read end of the supervisor's shutdown pipe (EOF = stop), if any."""
    log = tenant_logger(spec.name)
    code = EXIT_CRASH
    try:
        code = _run(spec, conn, parent_pid, log, shutdown_fd)
    except BaseException as exc:  # never a traceback with locals: one line, no secrets
        log.error("crashed: %s", describe_exception(exc))
    finally:
        _flush_logs()
    # os._exit: the parent's atexit hooks and multiprocessing finalizers must not run here.
    os._exit(code)


def _run(spec: TenantSpec, conn: Connection, parent_pid: int, log: logging.LoggerAdapter,
         shutdown_fd: int | None = None) -> int:
    control = Control(spec.id, spec.name, conn, spec.heartbeat_interval, spec.shutdown_timeout,
                      spec.idle_heartbeat_interval, shutdown_fd=shutdown_fd)
    control.install_signal_handlers()
    os.environ.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before PDEATHSIG was armed
        return protocol.EXIT_OK
    set_title(spec.name, "starting")
    control.hello()
    control.heartbeat()

    try:
        handler = load_handler(spec, log, keepalive=control.heartbeat_if_due,
                               counters=control.counters,
                               track_process_group=control.track_process_group)
    except HandlerError as exc:
        return _fatal(control, log, "config", str(exc))
    try:
        store = open_store(spec, keepalive=control.heartbeat_if_due)
    except UnsafeStateFile as exc:  # a link planted in state_dir: the operator must look
        return _fatal(control, log, "config", str(exc))
    signin.configure_process(keepalive=control.heartbeat_if_due)
    mailbox = Mailbox(spec, store, handler, control, log)
    Replayer(mailbox, control, log)  # hooks itself into the mailbox and the parent pipe
    session = Session(spec, control, mailbox, log)
    try:
        session.run()
    except FatalError as exc:
        return _fatal(control, log, exc.kind, exc.reason)
    except LeaseLost as exc:
        log.error("%s: stopping", exc)
        return protocol.EXIT_LEASE_LOST  # the supervisor's next lease renewal drops us
    finally:
        store.close()
    _close_handler(handler, log)
    log.info("stopped (%s)", control.stop_reason)
    return protocol.EXIT_OK


def _fatal(control: Control, log: logging.LoggerAdapter, kind: str, reason: str) -> int:
    log.error("%s", reason)
    control.send(protocol.fatal(kind, reason))
    return protocol.EXIT_AUTH if kind == "auth" else protocol.EXIT_CONFIG


def _close_handler(handler: object, log: logging.LoggerAdapter) -> None:
    try:
        handler.close()  # type: ignore[attr-defined]
    except Exception as exc:
        log.warning("handler close() failed: %s: %s", type(exc).__name__, exc)


def _set_parent_death_signal() -> None:
    """Get SIGTERM when the supervisor dies, even by SIGKILL (the pipe EOF is the backup)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
