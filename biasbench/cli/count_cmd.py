"""`biasbench count`: parameters (weights / biases / other), MACs and FLOPs of a model.

FLOPs follow the DAC paper's convention by default; `--convention macs|thop|fvcore` counts as
other papers do (see `biasbench.count` and docs/dac.md, op by op); every row is compared with
the same model's baseline variant, counted the same way. Models are built and run on the meta device,
so any input size is counted without allocating it; shapes the model cannot read are refused
before anything is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

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


def _shape(spec: Any, recipe_shape: tuple[int, ...] | None, features: int | None, input_size: int | None,
           in_channels: int | None) -> tuple[int, ...]:
    """The input shape to count, from the flags, the recipe or the model's kind of input (one
    example of it: `biasbench.data.INPUT_KINDS` says how a kind builds one)."""
    if features is not None:
        if input_size is not None or in_channels is not None:
            raise UserError("--features gives a flat input; do not combine it with --input-size / --in-channels")
        return (features,)
    if input_size is not None or in_channels is not None:
        if spec.inputs != "images":
            raise UserError(f"--input-size and --in-channels describe images; model `{spec.name}` reads "
                            f"{spec.inputs}: give --features N")
        base = recipe_shape if recipe_shape is not None and len(recipe_shape) == 3 else (3, 32, 32)
        side = input_size or base[-1]
        return (in_channels or base[0], side, side)
    if recipe_shape is not None:
        return recipe_shape
    if spec.inputs == "images":
        return (3, 32, 32)
    if spec.inputs == "sequences":
        raise UserError(f"model `{spec.name}` reads sequences (L, F): count a recipe, whose data set gives the shape")
    raise UserError(f"model `{spec.name}` reads {spec.inputs}: give --features N (or count a recipe)")


def _variants(model: str, variant: str, compare: bool) -> tuple[list[str], dict[str, str]]:
    """The variants to count (baseline first) and, with --compare-variants, why the others do not
    apply. The asked-for variant is always built, with its options: refused with its own reason
    if it must be."""
    from biasbench.models import applicable_variants, list_variants
    from biasbench.models.library import is_library_name

    if not compare:
        return list(dict.fromkeys(["baseline", variant])), {}
    if is_library_name(model):  # only converting tells which apply: refusals come while counting
        return list(dict.fromkeys(["baseline", variant, *list_variants()])), {}
    reasons = applicable_variants(model)
    refused = {v: why for v, why in reasons.items() if why and v != variant}
    return list(dict.fromkeys(v for v in ["baseline", variant, *sorted(reasons)] if v not in refused)), refused


def _row_options(name: str, variant: str, v_options: dict[str, Any]) -> dict[str, Any]:
    """The variant options of row `name`: all of them for the asked-for variant; for the others
    (the baseline first) only the activation, when they take one, so `--variant dnrt
    --variant-option activation=relu` compares with a ReLU baseline."""
    from biasbench.models.variants import VARIANTS, variant_options

    if name == variant:
        return v_options
    if "activation" in v_options and "activation" in variant_options(VARIANTS.get(name)):
        return {"activation": v_options["activation"]}
    return {}


def _count(model_name: str, variant: str, variant_options: dict, options: dict, input_shape: tuple[int, ...],
           num_classes: int, convention: str) -> dict[str, Any]:
    from biasbench.count import count_built
    from biasbench.models import build_model
    from biasbench.models.convert import conversion

    built = []

    def build():
        built.append(build_model(model_name, variant, num_classes=num_classes, in_channels=input_shape[0],
                                 input_shape=input_shape, variant_options=variant_options, **options))
        return built[-1]

    row = count_built(build, input_shape, convention)
    report = conversion(built[-1])
    return {**row, "conversion": report.to_dict()} if report else row


@app.command(epilog="Examples:\n\n  biasbench count --model resnet20_v2 --variant dac --input-size 80\n\n"
                    "  biasbench count --model resnet20_v2 --option width=4 --compare-variants\n\n"
                    "  biasbench count --model mlp --features 14 --option depth=8 --option width=200 --variant dac\n\n"
                    "  biasbench count --model torchvision:resnet18 --variant dac --compare-variants\n\n"
                    "  biasbench count --model vit_tiny_patch4 --option patch=16 --input-size 224 "
                    "--num-classes 1000 --variant dnrt --convention thop\n\n"
                    "  biasbench count recipes/resnet32_dac.yaml --json")
def count(
    recipe_path: Path | None = typer.Argument(None, metavar="[RECIPE.yaml]", help="Count the recipe's model."),
    model: str | None = typer.Option(None, "--model", help="Model name (`biasbench list models`), or "
                                                          "timm:NAME / torchvision:NAME (converted)."),
    variant: str | None = typer.Option(None, "--variant", help="Variant (`biasbench list variants`)."),
    input_size: int | None = typer.Option(None, "--input-size", min=1, help="Image side in pixels (default 32)."),
    num_classes: int | None = typer.Option(None, "--num-classes", min=1, help="Outputs (default 10)."),
    in_channels: int | None = typer.Option(None, "--in-channels", min=1, help="Image channels (default 3)."),
    features: int | None = typer.Option(None, "--features", min=1, help="Flat input of this many features (MLPs)."),
    option: list[str] = typer.Option([], "--option", metavar="KEY=VALUE", help="Model option key=value (repeatable)."),
    variant_option: list[str] = typer.Option([], "--variant-option", metavar="KEY=VALUE",
                                             help="Variant option key=value, e.g. K=8."),
    compare_variants: bool = typer.Option(False, "--compare-variants", metavar="",
                                          help="Every variant that applies to the model, side by side."),
    convention: str = typer.Option("dac-paper", "--convention", metavar="NAME",
                                   help="How operations are counted: dac-paper (FLOPs), dac-formula, macs, thop "
                                        "or fvcore (docs/dac.md)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print JSON instead of a table."),
) -> None:
    """Count parameters and FLOPs (or MACs, by --convention), with ratios to the baseline variant."""
    from biasbench.count import CONVENTIONS, data_shape, ratios
    from biasbench.models import model_spec

    if convention not in CONVENTIONS:
        raise UserError(f"--convention `{convention}` is not one of {', '.join(CONVENTIONS)}")
    options, v_options = _options(option, "--option"), _options(variant_option, "--variant-option")
    recipe_shape, classes = None, 10
    if recipe_path is not None:
        if model is not None:
            raise UserError("give a recipe or --model, not both")
        recipe = load_recipe(recipe_path)
        model, variant = recipe.model.name, variant or recipe.model.variant
        recipe_shape, classes = data_shape(recipe.data)
        options = {**recipe.model.options, **options}
        v_options = {**recipe.model.variant_options, **v_options}
    elif model is None:
        raise UserError("nothing to count: give a recipe file or --model NAME (e.g. --model resnet20_v1)")
    spec = model_spec(model)
    shape = _shape(spec, recipe_shape, features, input_size, in_channels)
    spec.check_input(shape)
    variant = variant or "baseline"
    classes = num_classes or classes

    names, refused = _variants(model, variant, compare_variants)
    rows = {}
    for name in names:
        try:
            rows[name] = _count(model, name, _row_options(name, variant, v_options), options, shape, classes,
                                convention)
        except UserError as e:
            if name in ("baseline", variant) or not compare_variants:
                raise
            refused[name] = str(e)  # a library model: its conversion says why
    for row in rows.values():
        row["vs_baseline"] = ratios(row, rows["baseline"])

    if as_json:
        print(json.dumps({"model": model, "options": options, "variant_options": v_options,
                          "input_shape": list(shape), "num_classes": classes, "variants": rows,
                          "not_applicable": refused}, indent=2))
        return
    _print_table(model, shape, classes, rows, refused, convention)


def si(value: float, digits: int = 4) -> str:
    """`digits` significant digits with an SI suffix: 509.3M, 542.0M, 1.112G, 8,640; 1.234e+21 beyond."""
    for suffix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:#.{digits}g}{suffix}" if value / scale < 1000 else f"{value:.{digits - 1}e}"
    return f"{value:,.0f}"


def _print_table(model: str, shape: tuple[int, ...], classes: int, rows: dict[str, dict],
                 refused: dict[str, str], convention: str) -> None:
    from biasbench.count import CONVENTIONS
    from biasbench.termtable import print_table

    unit, meaning = CONVENTIONS[convention]
    digits = 4 if convention == "dac-paper" else 5  # one more: papers truncate (DNRT's 1.0786 G is "1.078 G")
    headers = ["variant", "weights", "biases", "other", "params", "x base", unit, "x base"]
    table, skipped = [], {}
    for name, r in rows.items():
        p, ratio = r["params"], r["vs_baseline"]
        table.append([name, f"{p['weights']:,}", f"{p['biases']:,}", f"{p['other']:,}", f"{p['total']:,}",
                      f"{ratio['params']:.3f}", si(r["ops"], digits), f"{ratio['ops']:.3f}"])
        for op, n in r["skipped_ops"].items():
            skipped[op] = max(skipped.get(op, 0), n)
    notes = [f"{unit} ({convention}): {meaning} (docs/dac.md); x base: ratio to the baseline; per operator: --json."]
    if skipped:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(skipped.items()))
        notes.append(f"not counted (no rule under {convention}; activations, max pooling and residual additions are "
                     f"not counted by convention): {listed}")
    for name, why in refused.items():
        notes.append(f"not applicable: {name}: {why}")
    for name, r in rows.items():
        if "conversion" in r and name != "baseline":
            from biasbench.models.convert import Conversion

            notes.append(Conversion(**{**r["conversion"], "left": tuple((d["node"], d["reason"])
                                                                        for d in r["conversion"]["left"])}).line())
    print_table(f"{model}, input {'x'.join(map(str, shape))}, {classes} outputs", headers, table, notes)
