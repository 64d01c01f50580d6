"""Bias-only learning (spec section 5): which parameters train, and the random weights' law.

`train.trainable` is a `+`-joined set of parameter groups, decided by
`biasbench.params.parameter_roles`:

- `all`: everything (the default; must stand alone);
- `biases`: role "bias": linear/conv biases, BN shifts, ABN bias banks, RAA's b;
- `other`: role "other": BN / LayerNorm scales, class tokens, position embeddings, RAA's w;
- `readout`: every parameter of the readout (the module the model's registration names as its
  readout, e.g. bias_rnn's; else the last module owning a weight);
- `weights`: role "weight": every connection weight.

`biases` freezes BN scales: they multiply activations, so training them is not bias learning
(the paper's networks are plain MLPs without BN); ask for `biases+other` to train them too.
Frozen parameters get `requires_grad = False`, so the optimiser never sees them (no weight
decay, no momentum can move them) and `params.trainable` in the results counts what trained.

`train.weight_init: normal_fan_in` redraws every weight (role "weight", 2-d or more) from
N(0, 1/fan_in), fan_in = inputs per output unit (in * k * k for a conv); biases keep the
layer's own initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from biasbench.models.contract import model_hooks
from biasbench.params import parameter_roles

TOKENS = ("all", "biases", "other", "readout", "weights")
WEIGHT_INITS = ("default", "normal_fan_in")


def parse_trainable(spec: str) -> frozenset[str]:
    """`biases+readout` -> {'biases', 'readout'}; raises ValueError with the known tokens."""
    tokens = [t.strip() for t in spec.split("+")]
    bad = [t for t in tokens if t not in TOKENS]
    if bad or not tokens:
        raise ValueError(f"unknown trainable group(s) {bad}; use {', '.join(TOKENS)} joined by '+'")
    if "all" in tokens and len(tokens) > 1:
        raise ValueError("`all` already trains everything; do not combine it")
    return frozenset(tokens)


def readout_parameters(model: nn.Module) -> set[str]:
    """Qualified names of the readout's parameters."""
    hooks = model_hooks(model)
    named = hooks.readout if hooks is not None else None
    if named is not None:
        prefix = next(n for n, m in model.named_modules() if m is named)
        return {f"{prefix}.{n}" if prefix else n for n, _ in named.named_parameters()}
    roles = parameter_roles(model)
    last = None
    for mod_name, module in model.named_modules():
        own = [a for a, _ in module.named_parameters(recurse=False)]
        if any(roles[f"{mod_name}.{a}" if mod_name else a] == "weight" for a in own):
            last = (mod_name, own)
    if last is None:
        return set()
    mod_name, own = last
    return {f"{mod_name}.{a}" if mod_name else a for a in own}


def apply_trainable(model: nn.Module, spec: str) -> dict[str, int]:
    """Set `requires_grad` by role; returns {'trainable': n, 'frozen': n} element counts."""
    tokens = parse_trainable(spec)
    if tokens == {"all"}:  # leave the model as built: a layer may keep a parameter frozen on purpose
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {"trainable": n, "frozen": sum(p.numel() for p in model.parameters()) - n}
    roles = parameter_roles(model)
    readout = readout_parameters(model) if "readout" in tokens else set()
    wanted = {"biases": "bias", "other": "other", "weights": "weight"}
    counts = {"trainable": 0, "frozen": 0}
    for name, p in model.named_parameters():
        train = (
            "all" in tokens or name in readout or any(roles[name] == wanted[t] for t in tokens if t in wanted)
        )
        p.requires_grad_(train)
        counts["trainable" if train else "frozen"] += p.numel()
    if counts["trainable"] == 0:
        raise ValueError(f"train.trainable `{spec}` leaves nothing to train in this model")
    return counts


@torch.no_grad()
def init_weights(model: nn.Module, scheme: str) -> None:
    """Redraw the weights by `scheme` (see module doc); `default` keeps the layers' own init."""
    if scheme == "default":
        return
    if scheme != "normal_fan_in":
        raise ValueError(f"unknown weight_init `{scheme}`; known: {', '.join(WEIGHT_INITS)}")
    roles = parameter_roles(model)
    for name, p in model.named_parameters():
        if roles[name] == "weight" and p.dim() >= 2:
            fan_in = p[0].numel()
            p.normal_(0.0, fan_in**-0.5)
