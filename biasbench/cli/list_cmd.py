"""`biasbench list`: the models, variants, data sets and activations that exist.

Everything is read from the registrations (models' and data sets' declared metadata, variants'
declared needs and options), so nothing is built or loaded. The models x variants table says
which variant applies to which model exactly as `build_model` decides (a test holds them equal).
A fresh process reads the catalog from its cache (`biasbench.catalog`: no torch import, a tenth
of the time) and from the registries when any source file changed since it was written.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from typing import Any

import typer

from biasbench.catalog import KINDS, Catalog, baseline_first, catalog
from biasbench.cli.app import app
from biasbench.errors import UserError, did_you_mean
from biasbench.termtable import print_table

# Short column names for the models x variants table (it must fit 80 columns).
_SHORT = {"baseline": "base", "preact": "pre"}


@app.command("list", epilog="Examples:\n\n  biasbench list models\n\n  biasbench list variants --json\n\n"
                            "  biasbench list --filter 'resnet*'\n\n  biasbench list   (everything)")
def list_command(
    kind: str | None = typer.Argument(None, metavar="[KIND]",
                                      help="models, variants, datasets or activations (default: all four)."),
    name_filter: str | None = typer.Option(None, "--filter", metavar="GLOB",
                                           help="Only names matching this shell pattern ('resnet*', '*vit*'; "
                                                "case-insensitive)."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print JSON instead of tables."),
) -> None:
    """List the models (with the variants that apply to each), variants, data sets and activations."""
    if kind is not None and kind not in KINDS:
        raise UserError(f"nothing called `{kind}` to list{did_you_mean(kind, KINDS)}; "
                        f"choose one of {', '.join(KINDS)}")
    found = catalog()
    kinds = [kind] if kind else list(KINDS)
    docs = {k: found["docs"][k] for k in kinds}
    if name_filter is not None:
        docs = _matching(docs, name_filter)
    if as_json:
        print(json.dumps(docs, indent=2))
        return
    printers = {"models": _print_models, "variants": _print_variants, "datasets": _print_datasets,
                "activations": _print_activations}
    shown = [k for k, doc in docs.items() if doc or name_filter is None]  # a filter drops empty sections
    for i, k in enumerate(shown):
        if i:
            sys.stdout.write("\n")
        printers[k](docs[k], found)


def _matching(docs: dict[str, list[dict[str, Any]]], pattern: str) -> dict[str, list[dict[str, Any]]]:
    """The entries whose name matches `pattern`; a pattern that matches nothing is refused, since
    an empty listing would read as 'there is none' rather than 'you mistyped'."""
    wanted = pattern.lower()
    kept = {k: [e for e in doc if fnmatch.fnmatchcase(e["name"].lower(), wanted)] for k, doc in docs.items()}
    if not any(kept.values()):
        names = [e["name"] for doc in docs.values() for e in doc]
        where = "any of " + ", ".join(docs) if len(docs) > 1 else next(iter(docs))
        raise UserError(f"no name in {where} matches `{pattern}`{did_you_mean(pattern, names)}; "
                        "--filter takes a shell pattern (*, ?, [abc]) on the names")
    return kept


def _print_models(doc: list[dict[str, Any]], found: Catalog) -> None:
    variants = baseline_first(list(doc[0]["variants"])) if doc else []
    headers = ["model", "act"] + [_SHORT.get(v, v) for v in variants]
    rows = [[m["name"], m["activation"] or "-"] + [m["variants"][v] for v in variants] for m in doc]
    notes = ["yes: the variant applies; relu: it applies with model.variant_options.activation: relu; "
             "-: it does not (biasbench count --compare-variants and build_model say why). "
             "act: the model's default activation."]
    options = found["options_text"]["models"]
    notes += [f"{m['name']}: {m['summary']}; reads {m['reads']}; options: {options[m['name']]}" for m in doc]
    print_table("models x variants", headers, rows, notes)


def _print_variants(doc: list[dict[str, Any]], found: Catalog) -> None:
    every = len(found["docs"]["activations"])
    options = found["options_text"]["variants"]
    rows = [[v["name"], v["summary"], ", ".join(v["needs"]) or "nothing",
             "all" if len(v["activations"]) == every else ", ".join(v["activations"]), options[v["name"]]]
            for v in doc]
    print_table("variants (model.variant)", ["variant", "what", "needs", "activations", "options"], rows,
                ["needs: capabilities a model must offer (docs/architecture.md); options go in "
                 "model.variant_options (None: the form's or the model's default)."], records=True)


def _print_datasets(doc: list[dict[str, Any]], found: Catalog) -> None:
    rows = [[d["name"], "x".join(map(str, d["input_shape"])) if d["input_shape"] else "from data",
             str(d["outputs"]) if d["outputs"] is not None else "from data", "yes" if d["bundled"] else "-",
             d["task"]] for d in doc]
    print_table("data sets (data.name)", ["data set", "input", "outputs", "bundled", "task"], rows,
                ["input and outputs under the default data.options (image_size for the folder sets); "
                 "bundled: needs no data.root."], left=frozenset({0, 4}))


def _print_activations(doc: list[dict[str, Any]], found: Catalog) -> None:
    rows = [[a["name"], a["formula"], ", ".join(a["variants_without"]) or "-"] for a in doc]
    print_table("activations (model.variant_options.activation)", ["activation", "formula", "not with"], rows,
                left=frozenset({0, 1, 2}),
                notes=["not with: variants whose formula excludes it (mba: ReLU only; raa, dnrt: GELU or ReLU; "
                 "dac, preact: element-wise only)."])
