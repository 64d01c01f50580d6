"""The Typer application object that every command module registers on."""

import typer

app = typer.Typer(
    name="biasbench",
    help="Benchmark neural-network units that put their capacity into biases.\n\n"
         "Train recipes, evaluate checkpoints, count parameters and FLOPs, compare and report results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
