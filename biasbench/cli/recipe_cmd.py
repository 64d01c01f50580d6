"""`biasbench recipe show`: a recipe as the trainer sees it (extends, --smoke, --set, defaults)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from biasbench.cli.app import App, Group, app

recipe_app = App(cls=Group, help="Inspect recipes.", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(recipe_app, name="recipe")


@recipe_app.command(
    "show",
    epilog="Examples:\n\n  biasbench recipe show recipes/quickstart.yaml\n\n"
    "  biasbench recipe show recipes/dnrt/cifar10/vit_tiny_dnrt.yaml --smoke\n\n"
    "  biasbench recipe show recipes/quickstart.yaml --set optim.lr=1e-3 --json\n\n"
    "  biasbench recipe show R.yaml > resolved.yaml   (itself a recipe)",
)
def show(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.yaml", help="Recipe file (see recipes/)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a recipe key: --set optim.lr=0.05 (repeatable)."),
    smoke: bool = typer.Option(False, "--smoke", metavar="", help="Apply the recipe's smoke-sized overrides first."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print JSON instead of YAML."),
) -> None:
    """Print the fully resolved recipe: extends merged, --smoke and --set applied, defaults filled in.

    The YAML printed is itself a recipe: training it trains the same experiment."""
    from biasbench.recipe import load_recipe, recipe_document, recipe_yaml

    recipe = load_recipe(recipe_path, list(set_), smoke=smoke)
    if as_json:
        print(json.dumps({"source": recipe.source, "recipe": recipe_document(recipe)}, indent=1))
        return
    applied = (["--smoke"] if smoke else []) + [f"--set {s}" for s in set_]
    print(f"# {recipe_path}\n# resolved: extends merged, defaults filled in")
    for item in applied:
        print(f"#   {item}")
    print(recipe_yaml(recipe), end="")
