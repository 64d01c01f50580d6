"""`biasbench` command line: one module per command, all on one Typer app.

Every `UserError` becomes one line on stderr and exit code 2; Ctrl-C during training leaves a
resumable checkpoint and exits with 130. No traceback reaches the user for bad input.
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
    from biasbench.trainer import Interrupted

    try:
        app(args=argv, prog_name="biasbench")
    except UserError as e:
        err.print(f"[bold red]error:[/bold red] {escape(str(e))}")
        sys.exit(2)
    except Interrupted as e:
        err.print(f"interrupted: checkpoint and results kept in {e.run_dir}; continue with the same command "
                  "plus --resume")
        sys.exit(130)
