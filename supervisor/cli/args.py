"""What every `idle-supervisor` subcommand shares: the program name, the usage exit code, the
`--config` option and the loading of the config it names.

A module of its own so that each command module imports it and none imports another.
"""
from __future__ import annotations

import argparse
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
