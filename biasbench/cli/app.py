"""The Typer application object that every command module registers on."""

import typer

import biasbench

app = typer.Typer(
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
