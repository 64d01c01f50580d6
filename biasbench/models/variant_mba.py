"""`mba`: multi-bias activation (Li, Ouyang, Wang 2016; spec section 2), the DAC paper's rival.

Every activation that feeds a linear operator becomes K shifted ReLUs, `ReLU(x_c + b[k, c])`,
concatenated, so the linear operator behind it reads K*C channels: its weights and MACs grow
K-fold (a grouped conv keeps each group's copies together). Norms and the ResNet v1 identity
path keep the baseline's form (MBA changes what the linear operators read, not where the
activations are). ReLU only: the paper defines MBA with ReLU.

Two forms (option `form`):
- `paper` (default): the paper's formula, biases start at zero, trained like every other bias.
- `caffe`: the authors' released network (hli2020/caffe, examples/bias_project, spec section 7):
  ReLU, then K = 4 bias copies, concat (k-major), ReLU, then the linear operator; the biases of
  the first MBA of a stage start at {1, .5, -.5, -1}, of the second at {.3, .1, -.1, -.3}, of any
  later one at 0 (the prototxt's third position); learning rate x2 and no weight decay on them.
`stages` (e.g. [3], as the authors' CIFAR-10 net) puts MBA only on activations that read those
stages' features (1-based); the others stay plain ReLU. The explicit options `init`, `pre_relu`
and `lr_mult` override the form's defaults.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

from biasbench.errors import UserError
from biasbench.layers.mba import MultiBiasActivation
from biasbench.models.variants import VARIANTS, Variant, factory_options

CAFFE_INIT = ((1.0, 0.5, -0.5, -1.0), (0.3, 0.1, -0.1, -0.3), (0.0, 0.0, 0.0, 0.0))  # by position in a stage
FORMS = ("paper", "caffe")


def _check_options(K: Any, form: Any, stages: Any, init: Any, pre_relu: Any, lr_mult: Any) -> None:
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise UserError(f"variant `mba`: K must be a positive integer, got {K!r}")
    if form not in FORMS:
        raise UserError(f"variant `mba`: form must be `paper` or `caffe`, got {form!r}")
    if form == "caffe" and K != 4 and init is None:
        raise UserError(f"variant `mba`: the caffe form has K = 4 (its initial biases are 4 per position), got K={K}")
    if stages is not None and (not isinstance(stages, list) or not stages
                               or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in stages)):
        raise UserError(f"variant `mba`: stages must be a list of stage numbers (1 = first), got {stages!r}")
    if init not in (None, "zeros") and (not isinstance(init, (list, tuple)) or len(init) != K):
        raise UserError(f"variant `mba`: init must be `zeros` or a list of K={K} numbers, got {init!r}")
    if pre_relu is not None and not isinstance(pre_relu, bool):
        raise UserError(f"variant `mba`: pre_relu must be true or false, got {pre_relu!r}")
    if lr_mult is not None and (isinstance(lr_mult, bool) or not isinstance(lr_mult, (int, float)) or lr_mult <= 0):
        raise UserError(f"variant `mba`: lr_mult must be a positive number, got {lr_mult!r}")


@VARIANTS.register("mba")
class MultiBiasVariant(Variant):
    name = "mba"
    summary = "K shifted ReLUs per channel, concatenated; K*C inputs to the next layer (MBA)"
    requires = frozenset({"act_linear"})
    activations = ("relu",)
    activation_rule = "is defined with ReLU only"
    mechanism = (MultiBiasActivation,)

    def __init__(self, activation: str | None = None, K: int = 4, form: str = "paper", stages: list[int] | None = None,
                 init: Any = None, pre_relu: bool | None = None, lr_mult: float | None = None):
        super().__init__(activation=activation)
        _check_options(K, form, stages, init, pre_relu, lr_mult)
        caffe = form == "caffe"
        self.K, self.form, self.stages = K, form, stages
        self.init = init  # None: the form's (zeros, or caffe's by position)
        self.pre_relu = caffe if pre_relu is None else pre_relu
        self.lr_mult = float(lr_mult if lr_mult is not None else (2.0 if caffe else 1.0))
        self.decay = not caffe  # caffe: decay_mult 0 on these biases

    def needs(self) -> frozenset[str]:
        return self.requires | ({"stages"} if self.stages else set())

    def start_build(self) -> None:
        self._positions: Counter[int | None] = Counter()  # MBA units built so far, per stage
        self._stages_seen: set[int] = set()  # every stage a unit of the model named

    def check_built(self, model: nn.Module, model_name: str) -> None:
        if self.stages:
            seen = sorted(self._stages_seen) or ["none"]
            missing = sorted(set(self.stages) - self._stages_seen)
            if missing:
                raise UserError(f"variant `mba`: stages {missing} select no activation of model `{model_name}` "
                                f"(stages it has: {', '.join(map(str, seen))})")
        super().check_built(model, model_name)

    def _place(self, stage: int | None) -> bool:
        """Count the unit; True when it gets MBA."""
        if self.stages and stage is None:
            raise ValueError("a unit of this model names no stage, so `stages` cannot place MBA")
        if stage is not None:
            self._stages_seen.add(stage)
        if self.stages and stage not in self.stages:
            return False
        self._positions[stage] += 1
        return True

    def _mba(self, channels: int, stage: int | None, groups: int = 1, feature_dim: int = 1,
             **factory: Any) -> MultiBiasActivation:
        position = self._positions[stage] - 1
        if self.init is not None:
            init = self.init
        elif self.form == "caffe":
            init = CAFFE_INIT[min(position, len(CAFFE_INIT) - 1)]
        else:
            init = "zeros"
        return MultiBiasActivation(channels, self.K, groups=groups, feature_dim=feature_dim, pre_relu=self.pre_relu,
                                   init=init,
                                   lr_mult=self.lr_mult, decay=self.decay, **factory)

    def act_linear(self, in_features: int, out_features: int, bias: bool = True, *, role: str | None = None,
                   stage: int | None = None, feeds_activation: bool = False, **kwargs: Any) -> nn.Module:
        if not self._place(stage):
            return super().act_linear(in_features, out_features, bias, role=role, stage=stage,
                                      feeds_activation=feeds_activation, **kwargs)
        return nn.Sequential(self._mba(in_features, stage, feature_dim=-1, **factory_options(kwargs)),
                             nn.Linear(self.K * in_features, out_features, bias=self.keeps_bias(bias, feeds_activation),
                                       **kwargs))

    def act_conv2d(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                   padding: int = 0, bias: bool = False, *, groups: int = 1, role: str | None = None,
                   stage: int | None = None, feeds_activation: bool = False, **kwargs: Any) -> nn.Module:
        if not self._place(stage):
            return super().act_conv2d(in_channels, out_channels, kernel_size, stride, padding, bias, groups=groups,
                                      role=role, stage=stage, feeds_activation=feeds_activation, **kwargs)
        return nn.Sequential(self._mba(in_channels, stage, groups, **factory_options(kwargs)),
                             nn.Conv2d(self.K * in_channels, out_channels, kernel_size, stride=stride,
                                       padding=padding, groups=groups, bias=self.keeps_bias(bias, feeds_activation),
                                       **kwargs))

    def act_pool_linear(self, in_channels: int, out_features: int, *, stage: int | None = None,
                        **kwargs: Any) -> nn.Module:
        if not self._place(stage):
            return super().act_pool_linear(in_channels, out_features, stage=stage, **kwargs)
        return nn.Sequential(self._mba(in_channels, stage, **factory_options(kwargs)), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(self.K * in_channels, out_features, **kwargs))

