"""BN': batch normalisation without its shift (beta).

When a variant moves an activation's bias into the next linear operator (DAC, shared-bias
pre-activation), the BN that fed that activation keeps its scale but loses its shift: the shift
would be redundant with the downstream biases (spec section 1).
"""

from __future__ import annotations

from torch import nn


class _NoShift:
    # the scale multiplies activations, it is not a connection weight (as for any norm); BN' has
    # no shift parameter, only the running mean
    param_roles = {"weight": "other"}

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)


class BatchNorm1dNoShift(_NoShift, nn.BatchNorm1d):
    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.register_parameter("bias", None)


class BatchNorm2dNoShift(_NoShift, nn.BatchNorm2d):
    def __init__(self, num_features: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.register_parameter("bias", None)
