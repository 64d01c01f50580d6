"""`biasbench` command line: one module per command, all on one Typer app.

Every `UserError` becomes one line on stderr and exit code 2. A training stopped by Ctrl-C,
SIGTERM or SIGUSR1 keeps a resumable checkpoint, says so in one line and exits with 128 + the
signal's number (130, 143, 138). No traceback reaches the user for bad input.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

import biasbench.cli as _cli_package
from biasbench.cli.app import app
from biasbench.errors import UserError
from biasbench.plugins import import_submodules

import_submodules(_cli_package, suffix="_cmd")  # each *_cmd.py module registers one command


def main(argv: list[str] | None = None) -> None:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    from biasbench.stopping import Interrupted, StoppedBeforeTraining, exit_code, signal_name

    try:
        app(args=argv, prog_name="biasbench")
    except UserError as e:
        err.print(f"[bold red]error:[/bold red] {escape(str(e))}")
        sys.exit(2)
    except Interrupted as e:
        err.print(escape(interrupted_line(e)))
        sys.exit(exit_code(e.signum))
    except StoppedBeforeTraining as e:
        err.print(f"stopped by {signal_name(e.signum)} before training began; nothing was written")
        sys.exit(exit_code(e.signum))


def interrupted_line(e) -> str:
    """What an interrupted training leaves, and how to continue it."""
    from biasbench.stopping import signal_name

    by = signal_name(e.signum)
    if e.doc is None:  # several replicates (--jobs): each folder says what it kept
        return (f"interrupted ({by}): each run's checkpoint and results are kept in {e.run_dir}; continue "
                "with the same command plus --resume")
    if e.checkpoint_epoch is None:
        why = "output.checkpoint is false" if not e.doc["recipe"]["output"]["checkpoint"] else "no epoch had ended"
        return (f"interrupted ({by}): results (status interrupted) in {e.run_dir}; no checkpoint was kept ({why}), "
                "so --resume will start the run again")
    return (f"interrupted ({by}): checkpoint (epoch {e.checkpoint_epoch}) and results kept in {e.run_dir}; "
            "continue with the same command plus --resume")
