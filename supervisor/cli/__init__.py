"""`idle-supervisor` and its subcommands.

`main` is the console script's entry (`supervisor.cli:main` in setup.cfg) and what `python -m
supervisor` runs; the commands themselves live in program.py (run, reload, stop, check,
cluster), status.py and failed.py (failed, retry), each importing only args.py beside it.
"""
from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    # Imported on call: `import supervisor.cli` stays cheap and program.py imports nothing back.
    from supervisor.cli.program import main as run_command

    return run_command(argv)
