"""`convert(model, variant, **variant_options)`: a variant applied to any traceable nn.Module.

The DAC paper's rule (section 4, "More complex structures"): find every activation whose output
feeds linear operators and, per variant, give those operators the variant's pre-activation
units. torch.fx traces the model; each activation of the model's kind is followed through the
operations that pass a tensor on unchanged (Identity, Dropout(p=0)) to where its output goes:

    a Conv2d or Linear                 -> `act_conv2d` / `act_linear`, the operator's weights copied
    average pool (to 1x1), flatten, Linear  -> `act_pool_linear` (biasbench's own head)
    an addition (a residual path; through slicing and zero padding), whose sum in turn reaches
    only such activations             -> `backbone_act` (kept, or removed when the variant moves
                                          the shift into the operators: ResNet v1's identity path)
    anything else (a multiplication, a max pool, a concatenation, the output, ...): the
    activation is left as it is, and listed with the reason.

A BatchNorm (or an operator's bias) whose output reaches only converted activations loses its
shift when the variant moves it (`dac`, `preact`: BN -> BN'). Variants that change the
activation itself (`raa`, `dnrt`, or `activation` given) swap every activation of the model's
kind for `variant.act(width, dims)`; `arr` taps the responses of the modules named in `taps`
(or found: a timm transformer's `blocks`, a torchvision ResNet's `layer1..4`). The result is an
`fx.GraphModule` (state-dict names of the original modules are kept) carrying the same
`ModelHooks` as `build_model` attaches, plus a `Conversion` report (`conversion(model)`) that
lists every activation left and why. Nothing is dropped silently.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from biasbench.errors import UserError
from biasbench.layers.activations import ACTIVATIONS
from biasbench.layers.contract import TakesOperator, copy_operator
from biasbench.models.contract import ModelHooks, ModelSpec, Taps, attach_hooks, check_applies, class_token, pooled
from biasbench.models.variants import Variant, build_variant

# -- what an activation is ----------------------------------------------------------------------
# The element-wise activations of the registry, by their module class (GDN mixes channels: no activation here)
TABLE_MODULES: dict[type[nn.Module], str] = {a.module_type: a.name for a in ACTIVATIONS.values()
                                             if a.elementwise is not None}
TABLE_FUNCTIONS: dict[Any, str] = {F.relu: "relu", torch.relu: "relu", F.gelu: "gelu", F.silu: "silu", F.elu: "elu",
                                   F.selu: "selu", torch.selu: "selu", F.softplus: "softplus", F.relu6: "relu6",
                                   F.leaky_relu: "leaky_relu", "relu": "relu", "relu_": "relu"}  # str: methods
OTHER_MODULES = (nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish, nn.PReLU, nn.CELU, nn.Hardtanh,
                 nn.GLU, nn.Softsign, nn.LogSigmoid, nn.RReLU)
OTHER_FUNCTIONS = {F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid",
                   F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.mish: "mish", "sigmoid": "sigmoid",
                   "tanh": "tanh"}
_ADD = {operator.add, operator.iadd, torch.add}


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def activation_kind(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """The table name of an activation node, `?name` for one the table lacks, None otherwise."""
    m = _module(gm, node)
    if m is not None:
        if type(m) in TABLE_MODULES:
            return TABLE_MODULES[type(m)]
        return f"?{type(m).__name__.lower()}" if isinstance(m, OTHER_MODULES) else None
    if node.op in ("call_function", "call_method"):
        key = node.target
        if key in TABLE_FUNCTIONS:
            return TABLE_FUNCTIONS[key]
        if key in OTHER_FUNCTIONS:
            return f"?{OTHER_FUNCTIONS[key]}"
    return None


# -- where an activation's output goes ------------------------------------------------------------
@dataclass
class Sink:
    kind: str  # "conv", "linear", "head", "residual"
    node: fx.Node  # the linear operator, or the addition
    chain: list[fx.Node] = field(default_factory=list)  # nodes a unit makes dead (pool, flatten, ...)


def _passes_on(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Returns its input unchanged: Identity, Dropout(p=0)."""
    m = _module(gm, node)
    return isinstance(m, nn.Identity) or (isinstance(m, nn.Dropout) and m.p == 0.0)


def _reshapes(node: fx.Node) -> bool:
    """Moves or pads values without arithmetic (on a residual path): slicing, zero padding."""
    if node.op == "call_function" and node.target is operator.getitem:
        return True
    if node.op != "call_function" or node.target is not F.pad or len(node.args) > 2:
        return False
    return node.kwargs.get("mode", "constant") == "constant" and node.kwargs.get("value") in (None, 0, 0.0)


def _is_gap(gm: fx.GraphModule, node: fx.Node) -> bool:
    m = _module(gm, node)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return m.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        return node.args[1] in (1, (1, 1)) if len(node.args) > 1 else node.kwargs.get("output_size") in (1, (1, 1))
    return False


def _is_flatten(gm: fx.GraphModule, node: fx.Node) -> bool:
    m = _module(gm, node)
    if isinstance(m, nn.Flatten):
        return m.start_dim == 1 and m.end_dim == -1
    if (node.op, node.target) in (("call_function", torch.flatten), ("call_method", "flatten")):
        return (node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)) == 1
    return False


def _head(gm: fx.GraphModule, pool: fx.Node) -> Sink | None:
    """average pool -> flatten -> [Identity] -> Linear, each feeding only the next."""
    chain, node = [pool], pool
    while True:
        if len(node.users) != 1:
            return None
        (node,) = node.users
        if isinstance(_module(gm, node), nn.Linear) and len(chain) >= 2:
            return Sink("head", node, chain)
        if not (_is_flatten(gm, node) and len(chain) == 1 or _passes_on(gm, node) and len(chain) >= 2):
            return None
        chain.append(node)


def _what(gm: fx.GraphModule, node: fx.Node) -> str:
    """A blocking consumer in words: `they feed <what>`."""
    m = _module(gm, node)
    if m is not None:
        kind = type(m).__name__
        return f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind}"
    if node.op == "output":
        return "the model's output"
    if node.target in (operator.mul, torch.mul, operator.imul):
        return "a multiplication"
    if node.target in (torch.cat, torch.concat):
        return "a concatenation"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{name}()"


def sinks(gm: fx.GraphModule, act: fx.Node) -> tuple[list[Sink], str | None]:
    """Where `act`'s output goes, or why it cannot move (the first consumer that stops it)."""
    found: list[Sink] = []
    todo = [(user, False) for user in act.users]  # (node, reached through slicing/padding)
    while todo:
        node, reshaped = todo.pop()
        m = _module(gm, node)
        if _passes_on(gm, node) or _reshapes(node):
            todo += [(user, reshaped or _reshapes(node)) for user in node.users]
        elif node.op == "call_function" and node.target in _ADD:
            found.append(Sink("residual", node))
        elif reshaped:
            return [], f"they feed {_what(gm, node)} after slicing"
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and len(node.args) == 1 and not node.kwargs:
            found.append(Sink("conv" if isinstance(m, nn.Conv2d) else "linear", node))
        elif _is_gap(gm, node):
            head = _head(gm, node)
            if head is None:
                return [], "they feed an average pool that does not lead straight to a dense layer"
            found.append(head)
        else:
            return [], f"they feed {_what(gm, node)}"
    return found, None


def _max_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(gm, node), nn.MaxPool2d) or node.op == "call_function" and node.target is F.max_pool2d


def _users_through(gm: fx.GraphModule, node: fx.Node) -> list[fx.Node]:
    """The consumers of `node`'s value, looking through pass-on, slicing and padding nodes and
    max pools (a per-channel shift passes through a max pool unchanged)."""
    out, todo = [], list(node.users)
    while todo:
        user = todo.pop()
        if _passes_on(gm, user) or _reshapes(user) or _max_pool(gm, user):
            todo += list(user.users)
        else:
            out.append(user)
    return out


# -- the plan: every activation's fate, decided from the output backwards -------------------------
@dataclass
class Plan:
    kind: str | None  # the model's activation (the most common one of the table)
    activations: list[fx.Node]
    fate: dict[fx.Node, list[Sink]]  # converted activations
    left: dict[fx.Node, str]  # activations left as they are, with the reason
    absorbed: set[fx.Node]  # additions whose sums reach only converted activations

    def reaches_only_converted(self, gm: fx.GraphModule, node: fx.Node) -> bool:
        users = _users_through(gm, node)
        return bool(users) and all(u in self.fate or u in self.absorbed for u in users)


def plan(gm: fx.GraphModule, blocked: dict[fx.Node, str] | None = None) -> Plan:
    """Every activation's fate; `blocked`: activations whose units could not be built, and why."""
    blocked = blocked or {}
    kinds = {n: activation_kind(gm, n) for n in gm.graph.nodes}
    acts = [n for n, k in kinds.items() if k is not None]
    table = Counter(k for k in kinds.values() if k is not None and not k.startswith("?"))
    kind = table.most_common(1)[0][0] if table else None
    p = Plan(kind, acts, {}, {}, set())
    for node in reversed(list(gm.graph.nodes)):  # users first: an addition knows its activations
        k = kinds[node]
        if k is not None and k != kind:
            p.left[node] = (f"{k[1:]} is not in biasbench's activation table" if k.startswith("?")
                            else f"it is {k}, not the model's {kind}")
        elif k is not None:
            found, reason = sinks(gm, node)
            reason = blocked.get(node, reason)
            if reason is None and any(s.kind == "residual" and s.node not in p.absorbed for s in found):
                reason = "they feed an addition whose sum reaches more than activations"
            if reason is None:
                p.fate[node] = found
            else:
                p.left[node] = reason
        elif node.op == "call_function" and node.target in _ADD and p.reaches_only_converted(gm, node):
            p.absorbed.add(node)
    return p


# -- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conversion:
    """What `convert` did: activations found, converted (made units, or swapped), and left."""

    model: str
    variant: str
    action: str  # "units": pre-activation units; "swapped": activations replaced; "none": left as they are
    activations: int
    converted: int
    units: int = 0  # linear operators given the variant's pre-activation units
    shifts_removed: int = 0  # BNs made BN' and operator biases dropped
    fresh_weights: int = 0  # operators whose weights could not be copied (MBA reads K-fold inputs)
    taps: int = 0  # responses ARR reads
    left: tuple[tuple[str, str], ...] = ()  # (node, reason)

    def line(self) -> str:
        text = f"convert {self.model} to {self.variant}: "
        if self.action == "none":
            text += f"{self.activations} activations unchanged"
        else:
            done = "converted" if self.action == "units" else "swapped"
            text += f"{self.converted} of {self.activations} activations {done}"
        for count, what in ((self.units, "operators pre-activated"), (self.shifts_removed, "shifts removed"),
                            (self.fresh_weights, "operators with fresh weights (K-fold inputs)"),
                            (self.taps, "responses tapped")):
            text += f", {count} {what}" if count else ""
        if not self.left:
            return text + ("" if self.action == "none" else "; none left")
        reasons = Counter(reason for _, reason in self.left)
        return f"{text}; {len(self.left)} left: " + "; ".join(f"{n} {why}" for why, n in reasons.most_common())

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("model", "variant", "action", "activations", "converted", "units",
                                           "shifts_removed", "fresh_weights", "taps")}
        return {**d, "left": [{"node": n, "reason": r} for n, r in self.left]}


_REPORT_ATTRIBUTE = "biasbench_conversion"


def conversion(model: nn.Module) -> Conversion | None:
    """The report `convert` attached to `model`, or None."""
    report = model.__dict__.get(_REPORT_ATTRIBUTE)
    return report if isinstance(report, Conversion) else None


# -- rewriting ------------------------------------------------------------------------------------
def _set_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, stem: str) -> None:
    """Make `node` a call of `module` on its first argument: in place when the node's module is
    called nowhere else, else (a module called twice, a function) at a new path beside it."""
    if node.op == "call_module" and sum(n.target == node.target for n in gm.graph.nodes) == 1:
        gm.add_submodule(node.target, module)
        node.args, node.kwargs = node.args[:1], {}
        return
    scopes = [s.split("@")[0] for s in node.meta.get("nn_module_stack", {})]
    parent = node.target.rpartition(".")[0] if node.op == "call_module" else (scopes[-1] if scopes else "")
    i = 0
    while _exists(gm, f"{parent}.{stem}_{i}".lstrip(".")):
        i += 1
    path = f"{parent}.{stem}_{i}".lstrip(".")
    gm.add_submodule(path, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(path, (node.args[0],))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _exists(gm: fx.GraphModule, path: str) -> bool:
    try:
        gm.get_submodule(path)
        return True
    except AttributeError:
        return False


def _bypass(gm: fx.GraphModule, node: fx.Node) -> None:
    node.replace_all_uses_with(node.args[0])
    gm.graph.erase_node(node)


def _factory(m: nn.Module) -> dict[str, Any]:
    p = next(m.parameters(), None)
    return {} if p is None else {"device": p.device, "dtype": p.dtype}


def _square(value: Any, what: str) -> int:
    a, b = value if isinstance(value, tuple) else (value, value)
    if a != b or isinstance(a, str):
        raise ValueError(f"its conv has a non-square or named {what} {value}")
    return int(a)


def _unit(v: Variant, sink: Sink, op: nn.Module, bias: bool) -> nn.Module:
    """The variant's unit standing for `activation -> op` (may raise ValueError / UserError)."""
    extra = _factory(op)
    if sink.kind == "conv":
        if op.padding_mode != "zeros" or type(op) is not nn.Conv2d:
            raise ValueError(f"its conv is a {type(op).__name__} with {op.padding_mode} padding")
        if op.dilation != (1, 1):
            extra["dilation"] = op.dilation
        k, stride, padding = (_square(value, what) for value, what in
                              ((op.kernel_size, "kernel"), (op.stride, "stride"), (op.padding, "padding")))
        return v.act_conv2d(op.in_channels, op.out_channels, k, stride, padding, bias, groups=op.groups, **extra)
    if sink.kind == "linear":
        return v.act_linear(op.in_features, op.out_features, bias, **extra)
    return v.act_pool_linear(op.in_features, op.out_features, **({} if bias else {"bias": False}), **extra)


def _receiver(unit: nn.Module, weight: torch.Tensor) -> nn.Module | None:
    """The part of `unit` that takes the original operator's weight: the outermost one with a
    declared copy rule (`take_operator`, layers/contract.py), else the one part whose `.weight`
    has the operator's shape; None when there is none (MBA's operators read K times the inputs)."""
    declared = [m for m in unit.modules() if isinstance(m, TakesOperator)]
    if declared:
        return declared[0]  # modules() is outermost first
    parts = [m for m in unit.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)
             and m.weight.shape == weight.shape]
    return parts[0] if len(parts) == 1 else None


def _copy_weights(op: nn.Module, unit: nn.Module, keep_bias: bool) -> bool:
    """The operator's weight (and bias, unless the variant removed it) into the unit by the
    receiving layer's copy rule; False when no part takes it (the unit starts fresh, reported)."""
    target = _receiver(unit, op.weight)
    if target is None:
        return False
    copy_operator(target, op.weight, op.bias if keep_bias else None)
    return True


def _without_shift(gm: fx.GraphModule, node: fx.Node, v: Variant) -> bool:
    """BN -> the variant's BN' (statistics and scale kept), or a plain operator's bias dropped."""
    m = _module(gm, node)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
        new = v.norm(m.num_features, dims=2 if isinstance(m, nn.BatchNorm2d) else 1, eps=m.eps, momentum=m.momentum,
                     **_factory(m))
        with torch.no_grad():
            new.weight.copy_(m.weight)
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(new, name).copy_(getattr(m, name))
        gm.add_submodule(node.target, new)
        return True
    if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
        m.bias = None
        return True
    return False


def _build_units(gm: fx.GraphModule, p: Plan, v: Variant, shifted: set[fx.Node]
                 ) -> tuple[dict[fx.Node, dict[fx.Node, nn.Module]], dict[fx.Node, str]]:
    """The units of every converted activation, or the activations whose units cannot be built
    (a dilated conv under DAC, a non-square kernel, ...) with the reason."""
    built, failed = {}, {}
    for act, found in p.fate.items():
        try:
            built[act] = {s.node: _unit(v, s, _module(gm, s.node), _module(gm, s.node).bias is not None
                                        and s.node not in shifted) for s in found if s.kind != "residual"}
        except (ValueError, UserError) as e:
            failed[act] = str(e).split(";")[0]
    return built, failed


def _apply_units(gm: fx.GraphModule, p: Plan, v: Variant) -> tuple[Plan, int, int, int]:
    """Activations that feed linear operators become the variant's units; the plan is made again
    without the activations whose units cannot be built. Returns (plan, units, shifts removed,
    operators with fresh weights)."""
    blocked: dict[fx.Node, str] = {}
    while True:
        shifted = {n for n in gm.graph.nodes if v.removes_activation_shift and n.op == "call_module"
                   and p.reaches_only_converted(gm, n)}
        built, failed = _build_units(gm, p, v, shifted)
        if not failed:
            break
        blocked.update(failed)  # and the additions they fed may no longer be absorbed: plan again
        p = plan(gm, blocked)
    units = {op for ops in built.values() for op in ops}
    shifts = sum(_without_shift(gm, n, v) for n in shifted if n not in units)
    fresh = 0
    for act, ops in built.items():
        for op_node, unit in ops.items():
            op = _module(gm, op_node)
            shifts += op.bias is not None and op_node in shifted
            fresh += not _copy_weights(op, unit, keep_bias=op_node not in shifted)
            gm.add_submodule(op_node.target, unit)
            op_node.args = (act.args[0],)
        if act.users:  # what is left reaches additions: the backbone's activation
            backbone = v.backbone_act(_width(act), _dims(act))
            _bypass(gm, act) if isinstance(backbone, nn.Identity) else _set_module(gm, act, backbone, "act")
        for s in p.fate[act]:
            for dead in reversed(s.chain):
                if not dead.users:
                    gm.graph.erase_node(dead)
    _erase_unused(gm)
    return p, sum(len(ops) for ops in built.values()), shifts, fresh


def _erase_unused(gm: fx.GraphModule) -> None:
    """Activations and pass-on nodes left without users (later nodes first, so chains go too)."""
    for node in reversed(list(gm.graph.nodes)):
        if not node.users and node.op in ("call_module", "call_function", "call_method") and \
                (_passes_on(gm, node) or activation_kind(gm, node) is not None):
            gm.graph.erase_node(node)


def _width(node: fx.Node) -> int:
    shape = node.meta["shape"]
    return int(shape[1] if len(shape) == 4 else shape[-1])


def _dims(node: fx.Node) -> int:
    return 2 if len(node.meta["shape"]) == 4 else 1


def _swap_activations(gm: fx.GraphModule, p: Plan, v: Variant) -> None:
    """Every activation of the model's kind becomes `v.act(width, dims)`, wherever it feeds."""
    for node in p.activations:
        if activation_kind(gm, node) != p.kind:
            continue  # another kind, or not in the table: listed in p.left
        rank = len(node.meta["shape"])
        if rank not in (2, 3, 4):
            p.left[node] = f"its input has {rank} dimensions"
            continue
        p.left.pop(node, None)
        _set_module(gm, node, v.act(_width(node), _dims(node)), "act")


# -- taps for ARR -----------------------------------------------------------------------------------
def _found_taps(model: nn.Module) -> list[str]:
    """A timm transformer's blocks, a torchvision ResNet's layer1..4; else none."""
    children = dict(model.named_children())
    if isinstance(children.get("blocks"), (nn.Sequential, nn.ModuleList)):
        return [f"blocks.{name}" for name, _ in children["blocks"].named_children()]
    layers = sorted(n for n in children if n.startswith("layer") and n[5:].isdigit())
    return layers


def _scope_output(gm: fx.GraphModule, scope: str) -> fx.Node:
    """The one node computed inside module `scope` whose value is used outside it."""
    def inside(n: fx.Node) -> bool:
        return n.op == "call_module" and (n.target == scope or n.target.startswith(scope + ".")) or \
            any(s.split("@")[0] == scope for s in n.meta.get("nn_module_stack", {}))

    outputs = [n for n in gm.graph.nodes if inside(n) and any(not inside(u) for u in n.users)]
    if len(outputs) != 1:
        raise UserError(f"convert: tap `{scope}` " + ("names no module the model runs" if not outputs else
                        f"has {len(outputs)} outputs; tap one of its submodules instead"))
    return outputs[0]


def _insert_taps(gm: fx.GraphModule, scopes: Sequence[str], has_class_token: bool) -> Taps:
    modules, dims, ranks = [], [], set()
    for i, scope in enumerate(scopes):
        out = _scope_output(gm, scope)
        tap = nn.Identity()
        gm.add_submodule(f"biasbench_taps.{i}", tap)
        with gm.graph.inserting_after(out):
            new = gm.graph.call_module(f"biasbench_taps.{i}", (out,))
        new.meta = dict(out.meta)
        out.replace_all_uses_with(new, delete_user_cb=lambda user, tap=new: user is not tap)
        shape = out.meta.get("shape")
        if shape is None:
            raise UserError(f"convert: tap `{scope}` does not give one tensor; tap one of its submodules instead")
        modules.append(tap)
        dims.append(int(shape[1] if len(shape) == 4 else shape[-1]))
        ranks.add(len(shape))
    if len(ranks) > 1:
        raise UserError(f"convert: the taps {list(scopes)} give outputs of different ranks; tap alike modules")
    rank = ranks.pop() if ranks else 2
    reduce = {4: pooled, 3: class_token if has_class_token else _mean_tokens}.get(rank, _identity)
    return Taps(modules, dims, reduce)


def _mean_tokens(output: torch.Tensor) -> torch.Tensor:
    return output.mean(dim=1)


def _identity(output: torch.Tensor) -> torch.Tensor:
    return output


# -- the entry point ----------------------------------------------------------------------------------
def trace(model: nn.Module, name: str) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # torch.fx raises many kinds: say which, in one line
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"cannot convert `{name}`: torch.fx cannot trace it ({type(e).__name__}: {first}); "
                        "convert works on models whose forward has no data-dependent Python control flow") from None


class _Shapes(fx.Interpreter):
    """Runs the graph once, recording each tensor-valued node's shape in `node.meta["shape"]`."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["shape"] = tuple(result.shape)
        return result


def _propagate(gm: fx.GraphModule, input_shape: tuple[int, ...], name: str) -> torch.Tensor:
    first = next(gm.parameters(), None)
    x = torch.zeros((2, *input_shape), device=first.device if first is not None else "cpu",
                    dtype=first.dtype if first is not None and first.is_floating_point() else torch.float32)
    training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            return _Shapes(gm).run(x)
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"cannot convert `{name}`: it does not run on an input of shape "
                        f"{'x'.join(map(str, input_shape))} ({type(e).__name__}: {first_line}); give the input "
                        "size it was built for (a timm model: model.options.img_size)") from None
    finally:
        gm.train(training)


def convert(model: nn.Module, variant: str | Variant, *, input_shape: Sequence[int] | None = None,
            taps: Sequence[str] | None = None, name: str | None = None, **variant_options: Any) -> fx.GraphModule:
    """`model` with `variant` applied by the DAC paper's rule; the original is left untouched.

    `input_shape` (C, H, W) or (F,): one sample's shape, to trace widths (timm models know
    theirs); `taps`: module names whose outputs ARR reads (default: found, see `_found_taps`);
    `name`: what messages call the model. The result carries `model_hooks` and `conversion`."""
    name = name or type(model).__name__
    input_shape = tuple(input_shape or _default_input(model, name))
    original = copy.deepcopy(model)
    gm = trace(original, name)
    out = _propagate(gm, input_shape, name)
    p = plan(gm)
    tap_names = list(taps) if taps is not None else _found_taps(original)
    spec = _spec(name, p, input_shape, bool(tap_names))
    v = (variant if isinstance(variant, Variant) else build_variant(variant, **variant_options)).bind(spec)
    check_applies(spec, v)
    units = shifts = fresh = 0
    if "act_linear" in v.needs():
        action = "units"
        p, units, shifts, fresh = _apply_units(gm, p, v)
    elif "activations" in v.needs() or v.activation_given:
        action = "swapped"
        _swap_activations(gm, p, v)
    else:
        action = "none"
        p.left.clear()  # nothing was asked of the activations
    tapped = _insert_taps(gm, tap_names, getattr(original, "cls_token", None) is not None) \
        if "response_taps" in v.needs() else None
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    gm.train(model.training)
    v.check_built(gm, name)
    left = tuple((n.name, reason) for n, reason in p.left.items())
    report = Conversion(name, v.name, action, len(p.activations), len(p.activations) - len(left), units, shifts,
                        fresh, len(tapped.modules) if tapped else 0, left)
    object.__setattr__(gm, _REPORT_ATTRIBUTE, report)
    attach_hooks(gm, ModelHooks(spec, v, loss_terms=v.loss_terms(tapped, int(out.shape[-1]))))
    return gm


def _default_input(model: nn.Module, name: str) -> tuple[int, ...]:
    cfg = getattr(model, "pretrained_cfg", None)  # timm's models know their input size
    if isinstance(cfg, dict) and "input_size" in cfg:
        return tuple(cfg["input_size"])
    raise UserError(f"convert `{name}`: give input_shape, one sample's shape such as (3, 32, 32)")


def _spec(name: str, p: Plan, input_shape: tuple[int, ...], has_taps: bool) -> ModelSpec:
    offers = {"activations"} if p.kind else set()
    offers |= {"act_linear"} if any(s.kind != "residual" for f in p.fate.values() for s in f) else set()
    offers |= {"response_taps"} if has_taps else set()
    inputs = {3: "images", 2: "sequences"}.get(len(input_shape), "features")
    return ModelSpec(name, _not_registered, f"{name}, converted by biasbench.models.convert", inputs,  # type: ignore[arg-type]
                     frozenset(offers), p.kind, _taps_of if has_taps else None)


def _not_registered(**_: Any) -> nn.Module:
    raise UserError("a converted model is built by convert(), not by name")


def _taps_of(net: nn.Module) -> Taps:
    raise UserError("a converted model's taps are set by convert()")
