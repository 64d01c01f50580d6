"""`biasbench count`: parameters (weights / biases / other), MACs and FLOPs of a model.

FLOPs follow the DAC paper's convention (see `biasbench.count` and docs/dac.md); every row is
compared with the same model's baseline variant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from biasbench.cli.app import app
from biasbench.errors import UserError
from biasbench.recipe import load_recipe, parse_override


def _options(pairs: list[str], flag: str) -> dict[str, Any]:
    out = {}
    for text in pairs:
        if "=" not in text:
            raise UserError(f"{flag} `{text}` must look like key=value, e.g. {flag} width=4")
        key, value = parse_override(text)
        out[key] = value
    return out


def _count(model_name: str, variant: str, variant_options: dict, options: dict, input_shape: tuple[int, ...],
           num_classes: int) -> dict[str, Any]:
    from biasbench.count import complexity
    from biasbench.models import build_model

    model = build_model(model_name, variant, num_classes=num_classes, in_channels=input_shape[0],
                        input_shape=input_shape, variant_options=variant_options, **options)
    return complexity(model, input_shape)


@app.command(epilog="Examples:\n\n  biasbench count --model resnet20_v2 --variant dac --input-size 80\n\n"
                    "  biasbench count --model resnet20_v2 --option width=4 --compare-variants\n\n"
                    "  biasbench count --model mlp --features 14 --option depth=8 --option width=200 --variant dac\n\n"
                    "  biasbench count recipes/resnet32_dac.yaml --json")
def count(
    recipe_path: Path | None = typer.Argument(None, metavar="[RECIPE.yaml]", help="Count the recipe's model."),
    model: str | None = typer.Option(None, "--model", help="Model name (see `biasbench.models.list_models`)."),
    variant: str | None = typer.Option(None, "--variant", help="Variant: baseline, dac, preact, mba, ..."),
    input_size: int | None = typer.Option(None, "--input-size", min=1, help="Image side in pixels (default 32)."),
    num_classes: int | None = typer.Option(None, "--num-classes", min=1, help="Outputs (default 10)."),
    in_channels: int | None = typer.Option(None, "--in-channels", min=1, help="Image channels (default 3)."),
    features: int | None = typer.Option(None, "--features", min=1, help="Flat input of this many features (MLPs)."),
    option: list[str] = typer.Option([], "--option", help="Model option key=value (repeatable)."),
    variant_option: list[str] = typer.Option([], "--variant-option", help="Variant option key=value, e.g. K=8."),
    compare_variants: bool = typer.Option(False, "--compare-variants", help="Every variant side by side."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Count parameters, MACs and FLOPs (paper convention), with ratios to the baseline variant."""
    from biasbench.count import data_shape, ratios
    from biasbench.models import list_variants

    options, v_options = _options(option, "--option"), _options(variant_option, "--variant-option")
    if recipe_path is not None:
        if model is not None:
            raise UserError("give a recipe or --model, not both")
        recipe = load_recipe(recipe_path)
        model, variant = recipe.model.name, variant or recipe.model.variant
        shape, classes = data_shape(recipe.data)
        options = {**recipe.model.options, **options}
        v_options = {**recipe.model.variant_options, **v_options}
    elif model is None:
        raise UserError("nothing to count: give a recipe file or --model NAME (e.g. --model resnet20_v1)")
    else:
        shape, classes = (3, 32, 32), 10
    variant = variant or "baseline"
    if features is not None:
        shape = (features,)
    elif input_size is not None or in_channels is not None:
        side = input_size or (shape[-1] if len(shape) == 3 else 32)
        shape = (in_channels or (shape[0] if len(shape) == 3 else 3), side, side)
    classes = num_classes or classes

    names = list_variants() if compare_variants else list(dict.fromkeys(["baseline", variant]))
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            rows[name] = _count(model, name, v_options if name == variant else {}, options, shape, classes)
        except UserError as e:
            if name in ("baseline", variant):
                raise
            rows[name] = {"error": str(e)}  # a variant that does not apply to this model
    base = rows["baseline"]
    for row in rows.values():
        if "error" not in row:
            row["vs_baseline"] = ratios(row, base)

    if as_json:
        print(json.dumps({"model": model, "options": options, "variant_options": v_options,
                          "input_shape": list(shape), "num_classes": classes, "variants": rows}, indent=2))
        return
    console = Console(highlight=False)
    console.width = max(console.width, 132)  # the table is wide; never truncate numbers
    _print_table(model, shape, classes, rows, console)


def _print_table(model: str, shape: tuple[int, ...], classes: int, rows: dict[str, dict], console: Console) -> None:
    table = Table(title=f"{model}, input {'x'.join(map(str, shape))}, {classes} outputs "
                        f"(FLOPs: multiply-add = 2, DAC pre-activations cached)")
    for col in ("variant", "weights", "biases", "other", "params", "params vs base", "MACs", "GFLOPs",
                "FLOPs vs base"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    skipped: dict[str, int] = {}
    for name, r in rows.items():
        if "error" in r:
            table.add_row(name, f"[dim]does not apply: {r['error']}[/dim]", *[""] * 7)
            continue
        p, ratio = r["params"], r["vs_baseline"]
        table.add_row(name, f"{p['weights']:,}", f"{p['biases']:,}", f"{p['other']:,}", f"{p['total']:,}",
                      f"{ratio['params']:.3f}", f"{r['macs']:,}", f"{r['flops'] / 1e9:.4f}", f"{ratio['flops']:.3f}")
        for op, n in r["skipped_ops"].items():
            skipped[op] = max(skipped.get(op, 0), n)
    console.print(table)
    if skipped:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(skipped.items()))
        console.print(f"not counted (no FLOP handle; residual additions are not counted by convention): {listed}")
