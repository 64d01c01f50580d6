"""The Typer application object that every command module registers on."""

import contextlib
import io
import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

import biasbench


class _PlainHelp:
    """What `--help` shows, for every command and the group: the help option takes no value (no
    `<bool>` after it), and a required argument reads `RECIPE.yaml` in the usage line, as the
    arguments table names it, not Typer's `{RECIPE.yaml}` (braces read as a set of choices); an
    optional one whose metavar has its brackets reads `[KIND]`, not `[[KIND]]`."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        pieces = [p[1:].replace("}", "", 1) if p.startswith("{") else p for p in pieces]
        pieces = [p[1:].replace("]]", "]", 1) if p.startswith("[[") else p for p in pieces]  # metavar `[KIND]`
        return [p.replace("......", "...") for p in pieces]  # metavar `RESULTS...`, which Typer extends

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """Through a pipe or into a file, lines end at their last character: rich pads every
        line of the help to the width with spaces (on a terminal that is invisible)."""
        if sys.stdout.isatty():
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            super().format_help(ctx, formatter)  # type: ignore[misc]
        sys.stdout.write("\n".join(line.rstrip() for line in captured.getvalue().split("\n")))


class Command(_PlainHelp, TyperCommand):
    pass


class Group(_PlainHelp, TyperGroup):
    pass


class App(typer.Typer):
    """Every `@app.command` gets the plain help layout unless it names its own class."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or Command, **kwargs)


app = App(
    cls=Group,
    name="biasbench",
    help="Benchmark neural-network units that put their capacity into biases.\n\n"
         "Train recipes, evaluate checkpoints, count parameters and FLOPs, compare and report results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        print(f"biasbench {biasbench.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", metavar="", is_eager=True, callback=_print_version,
                                 help="Print biasbench's version and exit."),
) -> None:
    """Benchmark neural-network units that put their capacity into biases."""
