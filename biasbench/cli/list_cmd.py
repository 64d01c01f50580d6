"""`biasbench list`: the models, variants, data sets and activations that exist.

Everything is read from the registrations (models' and data sets' declared metadata, variants'
declared needs and options), so nothing is built or loaded. The models x variants table says
which variant applies to which model exactly as `build_model` decides (a test holds them equal).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from biasbench.cli.app import app
from biasbench.errors import UserError, did_you_mean

# Short column names for the models x variants table (it must fit 80 columns).
_SHORT = {"baseline": "base", "preact": "pre"}


def _options(defaults: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in defaults.items()) or "none"


def models_doc() -> list[dict[str, Any]]:
    from biasbench.models import applicability, list_models, model_options, model_spec

    out = []
    for name in list_models():
        spec = model_spec(name)
        out.append({"name": name, "summary": spec.summary, "reads": spec.inputs, "activation": spec.activation,
                    "offers": sorted(spec.offers), "options": model_options(name), "variants": applicability(name)})
    return out


def variants_doc() -> list[dict[str, Any]]:
    from biasbench.layers.activations import ACTIVATIONS
    from biasbench.models import list_variants
    from biasbench.models.variants import VARIANTS, variant_options

    out = []
    for name in _ordered(list_variants()):
        cls = VARIANTS.get(name)
        out.append({"name": name, "summary": cls.summary, "needs": sorted(cls.requires),
                    "activations": list(cls.activations or ACTIVATIONS), "options": variant_options(cls),
                    "renamed_options": dict(cls.renamed_options)})
    return out


def datasets_doc() -> list[dict[str, Any]]:
    from biasbench.data import dataset_info, list_datasets

    out = []
    for name in list_datasets():
        info = dataset_info(name)
        shape = info.shape({})
        out.append({"name": name, "summary": info.summary, "task": info.task, "bundled": info.bundled,
                    "input_shape": list(shape[0]) if shape else None, "outputs": shape[1] if shape else None})
    return out


def activations_doc() -> list[dict[str, Any]]:
    from biasbench.layers.activations import ACTIVATIONS
    from biasbench.models import list_variants
    from biasbench.models.variants import VARIANTS

    refused_by = {a: [v for v in _ordered(list_variants()) if VARIANTS.get(v).activations is not None
                      and a not in VARIANTS.get(v).activations] for a in ACTIVATIONS}
    return [{"name": a.name, "formula": a.formula, "elementwise": a.elementwise is not None,
             "variants_without": refused_by[a.name]} for a in ACTIVATIONS.values()]


def _ordered(variants: list[str]) -> list[str]:
    return ["baseline"] + [v for v in variants if v != "baseline"]


_DOCS = {"models": models_doc, "variants": variants_doc, "datasets": datasets_doc, "activations": activations_doc}


@app.command("list", epilog="Examples:\n\n  biasbench list models\n\n  biasbench list variants --json\n\n"
                            "  biasbench list   (everything)")
def list_command(
    kind: str | None = typer.Argument(None, metavar="[KIND]",
                                      help="models, variants, datasets or activations (default: all four)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print JSON instead of tables."),
) -> None:
    """List the models (with the variants that apply to each), variants, data sets and activations."""
    if kind is not None and kind not in _DOCS:
        raise UserError(f"nothing called `{kind}` to list{did_you_mean(kind, _DOCS)}; "
                        f"choose one of {', '.join(_DOCS)}")
    docs = {k: _DOCS[k]() for k in ([kind] if kind else _DOCS)}
    if as_json:
        print(json.dumps(docs, indent=2, default=str))
        return
    printers = {"models": _print_models, "variants": _print_variants, "datasets": _print_datasets,
                "activations": _print_activations}
    for i, (k, doc) in enumerate(docs.items()):
        if i:
            sys.stdout.write("\n")
        printers[k](doc)


def _print_models(doc: list[dict[str, Any]]) -> None:
    from biasbench.termtable import print_table

    variants = list(doc[0]["variants"]) if doc else []
    variants = _ordered(variants)
    headers = ["model", "act"] + [_SHORT.get(v, v) for v in variants]
    rows = [[m["name"], m["activation"] or "-"] + [m["variants"][v] for v in variants] for m in doc]
    notes = ["yes: the variant applies; relu: it applies with model.variant_options.activation: relu; "
             "-: it does not (biasbench count --compare-variants and build_model say why). "
             "act: the model's default activation."]
    notes += [f"{m['name']}: {m['summary']}; reads {m['reads']}; options: {_options(m['options'])}" for m in doc]
    print_table("models x variants", headers, rows, notes)


def _print_variants(doc: list[dict[str, Any]]) -> None:
    from biasbench.termtable import print_table

    rows = [[v["name"], v["summary"], ", ".join(v["needs"]) or "nothing", _activations(v["activations"]),
             _options(v["options"])] for v in doc]
    print_table("variants (model.variant)", ["variant", "what", "needs", "activations", "options"], rows,
                ["needs: capabilities a model must offer (docs/architecture.md); options go in "
                 "model.variant_options (None: the form's or the model's default)."], records=True)


def _activations(names: list[str]) -> str:
    from biasbench.layers.activations import ACTIVATIONS

    return "all" if len(names) == len(ACTIVATIONS) else ", ".join(names)


def _print_datasets(doc: list[dict[str, Any]]) -> None:
    from biasbench.termtable import print_table

    rows = [[d["name"], "x".join(map(str, d["input_shape"])) if d["input_shape"] else "from data",
             str(d["outputs"]) if d["outputs"] is not None else "from data", "yes" if d["bundled"] else "-",
             d["task"]] for d in doc]
    print_table("data sets (data.name)", ["data set", "input", "outputs", "bundled", "task"], rows,
                ["input and outputs under the default data.options (image_size for the folder sets); "
                 "bundled: needs no data.root."], left=frozenset({0, 4}))


def _print_activations(doc: list[dict[str, Any]]) -> None:
    from biasbench.termtable import print_table

    rows = [[a["name"], a["formula"], ", ".join(a["variants_without"]) or "-"] for a in doc]
    print_table("activations (model.variant_options.activation)", ["activation", "formula", "not with"], rows,
                left=frozenset({0, 1, 2}),
                notes=["not with: variants whose formula excludes it (mba: ReLU only; raa, dnrt: GELU or ReLU; "
                 "dac, preact: element-wise only)."])
