"""The registry every seam uses: names, one-line refusals, deprecation aliases."""

from __future__ import annotations

import pytest

from biasbench.data import DATASETS
from biasbench.data.augment import AUGMENTS
from biasbench.errors import UserError
from biasbench.layers.activations import ACTIVATIONS
from biasbench.loggers import LOGGERS
from biasbench.models import MODELS
from biasbench.models.variants import VARIANTS
from biasbench.registry import Registry


@pytest.fixture
def shapes() -> Registry[str]:
    reg: Registry[str] = Registry("shape")
    reg.register("square", aliases=("box",))("four equal sides")
    reg.register("circle")("round")
    reg.alias("disc", "circle", since="0.2.0")
    return reg


def test_old_names_find_the_item_and_warn_once_in_one_line_naming_the_new_name(shapes, capsys):
    assert shapes.get("box") == shapes.get("square") == "four equal sides"
    assert shapes.get("box") == "four equal sides"  # a second lookup: no second warning
    assert shapes["disc"] == "round"
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["warning: shape `box` was renamed `square`; write `square` (the old name will go)",
                     "warning: shape `disc` was renamed `circle` in biasbench 0.2.0; write `circle` "
                     "(the old name will go)"]


def test_current_names_look_up_without_a_word(shapes, capsys):
    assert shapes.get("circle") == "round" and shapes.current("square") == "square"
    assert capsys.readouterr().err == ""


def test_only_current_names_are_listed(shapes):
    assert shapes.names() == ["circle", "square"]
    assert list(shapes) == ["square", "circle"]  # registration order
    assert len(shapes) == 2 and "box" not in shapes and "square" in shapes
    assert shapes.items() == [("square", "four equal sides"), ("circle", "round")]


def test_an_unknown_name_is_one_line_suggesting_current_names_only(shapes):
    with pytest.raises(UserError) as e:
        shapes.get("squar")
    message = str(e.value)
    assert "\n" not in message and "did you mean `square`" in message
    assert "known: circle, square" in message and "box" not in message


@pytest.mark.parametrize("register", [
    lambda reg: reg.register("circle")("again"),  # a current name twice
    lambda reg: reg.register("box")("new"),  # a current name that is an old one
    lambda reg: reg.alias("circle", "square"),  # an old name that is a current one
    lambda reg: reg.alias("ring", "oval"),  # an alias of nothing
])
def test_clashing_registrations_are_refused(shapes, register):
    with pytest.raises(ValueError):
        register(shapes)


@pytest.mark.parametrize("registry", [MODELS, VARIANTS, DATASETS, ACTIVATIONS, AUGMENTS, LOGGERS],
                         ids=lambda r: r.kind)
def test_every_seam_is_a_registry_whose_names_find_their_items(registry):
    assert isinstance(registry, Registry) and registry.names()
    assert registry.names() == sorted(registry)
    for name, item in registry.items():
        assert registry.get(name) is item
