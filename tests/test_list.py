"""`biasbench list`: everything that exists, read from the registrations, in 80 columns."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

from biasbench.data import dataset_info, list_datasets
from biasbench.errors import UserError
from biasbench.layers.activations import ACTIVATIONS
from biasbench.models import list_models, list_variants, model_spec
from biasbench.models.variants import VARIANTS, build_variant, variant_options
from tests.conftest import one_line_error, run_cli

NAMES = {"models": list_models(), "variants": list_variants(), "datasets": list_datasets(),
         "activations": list(ACTIVATIONS)}


def test_list_shows_every_model_variant_data_set_and_activation_in_80_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["list"])
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    firsts = {line.split()[0].rstrip(":") for line in lines if line.strip()}
    for kind, names in NAMES.items():
        assert set(names) <= firsts, (kind, set(names) - firsts)


def _refuses(variant: str, activation: str) -> bool:
    try:
        build_variant(variant, activation=activation)
    except UserError:
        return True
    return False


def test_list_json_is_read_from_the_registrations():
    code, out, err = run_cli(["list", "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert [m["name"] for m in doc["models"]] == list_models()
    for m in doc["models"]:
        spec = model_spec(m["name"])
        assert (m["reads"], m["activation"], set(m["offers"])) == (spec.inputs, spec.activation, set(spec.offers))
    for v in doc["variants"]:
        assert v["options"] == variant_options(VARIANTS.get(v["name"]))
    assert {v["name"] for v in doc["variants"]} == set(list_variants())
    for d in doc["datasets"]:
        info = dataset_info(d["name"])
        assert d["bundled"] == info.bundled
        shape = info.shape({})
        assert d["input_shape"] == (list(shape[0]) if shape else None)
    by_name = {d["name"]: d for d in doc["datasets"]}
    assert by_name["cifar100"]["outputs"] == 100 and by_name["digits"]["bundled"]
    assert by_name["imagenette"]["input_shape"] == [3, 80, 80]  # the DAC paper's 80 px default
    refuse_gdn = [v for v in list_variants() if _refuses(v, "gdn")]  # the variants' own checks
    assert {a["name"]: a["variants_without"] for a in doc["activations"]}["gdn"] == refuse_gdn and refuse_gdn


def test_list_on_a_terminal_fits_80_columns_too(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "stdout", screen)
    from biasbench.cli import main

    with pytest.raises(SystemExit) as done:
        main(["list"])
    assert done.value.code in (0, None)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue())
    assert "\x1b[1m" in screen.getvalue()  # bold headers on a terminal
    assert all(len(line) <= 80 for line in plain.splitlines())
    assert set(list_models()) <= {line.split()[0] for line in plain.splitlines() if line.strip()}


def test_list_refuses_an_unknown_kind_in_one_line():
    one_line_error(*run_cli(["list", "model"])[::2], "`model`", "did you mean `models`")
