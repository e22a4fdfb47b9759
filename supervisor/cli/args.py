"""What every `idle-supervisor` subcommand shares: the program name, the usage exit code, the
`--config` option and the loading of the config it names, and telling the running supervisor.

A module of its own so that each command module imports it and none imports another.
"""
from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from supervisor.config.env import resolve_config_path
from supervisor.config.load import load_config
from supervisor.config.settings import Config

EXIT_USAGE = 2
PROG = "idle-supervisor"


def with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c",
                   help="config TOML (default: $IDLE_SUPERVISOR_CONFIG; with neither, "
                        "IDLE_SUPERVISOR_<SECTION>_<KEY> and SUPABASE_* variables configure "
                        "everything, as on Railway or in a container)")


def load(args: argparse.Namespace) -> tuple[Path | None, Config]:
    """The config named by --config (or the environment), loaded as `run` loads it."""
    path = resolve_config_path(args.config)
    return path, load_config(path)


def tell_supervisor(state_dir: Path, command: str, signum: signal.Signals) -> tuple[int, str] | None:
    """Ask the supervisor running with `state_dir` to `command` over its control socket (it
    names what it did); send `signum` through the pid file when it does not answer there (an
    older one, or a socket that could not be created). (pid, what was done), or None when no
    supervisor runs there."""
    from supervisor.service.control import CommandError, ControlUnavailable, request
    from supervisor.service.pidfile import read_pid

    pid = read_pid(state_dir)
    if pid is None:
        return None
    try:
        request(state_dir, command)
    except (ControlUnavailable, CommandError):
        os.kill(pid, signum)
        return pid, f"sent {signum.name} to supervisor pid {pid}"
    return pid, f"asked supervisor pid {pid} to {command} ({signum.name}) over the control socket"
