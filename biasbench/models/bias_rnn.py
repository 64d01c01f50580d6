"""`bias_rnn`: a recurrent network with fixed random input and recurrent weights (spec section 5).

    h_t = tanh(W_rec h_{t-1} + W_in u_t + b),  h_0 = 0,  y_t = readout(h_t)

W_rec ~ N(0, gain^2 / hidden) (default 1.5: rich, self-sustained dynamics; in our runs of the
`periodic_signal` generation task bias-only learning fails at gain 0.9 and is seed-dependent at
1.2), W_in ~ N(0, 1 / inputs),
b ~ U(-1/sqrt(hidden), 1/sqrt(hidden)). With `train.trainable: biases` only b and the readout's bias
learn; the readout's weights too with `biases+readout`. Input (B, L, inputs); output (B, L) for
one output per step, else (B, L, outputs).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from biasbench.models import register_model
from biasbench.models.variants import Variant


class BiasRNN(nn.Module):
    param_roles = {"input_weight": "weight", "recurrent_weight": "weight", "bias": "bias"}

    def __init__(self, inputs: int, hidden: int, outputs: int, gain: float = 1.5):
        super().__init__()
        self.hidden, self.outputs, self.gain = hidden, outputs, gain
        self.input_weight = nn.Parameter(torch.empty(hidden, inputs))
        self.recurrent_weight = nn.Parameter(torch.empty(hidden, hidden))
        self.bias = nn.Parameter(torch.empty(hidden))
        self.readout = nn.Linear(hidden, outputs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.input_weight.normal_(0.0, 1.0 / math.sqrt(self.input_weight.shape[1]))
            self.recurrent_weight.normal_(0.0, self.gain / math.sqrt(self.hidden))
            self.bias.uniform_(-1.0 / math.sqrt(self.hidden), 1.0 / math.sqrt(self.hidden))
        self.readout.reset_parameters()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        drive = u @ self.input_weight.T + self.bias  # (B, L, H): the input part of every step at once
        h = u.new_zeros(u.shape[0], self.hidden)
        states = []
        for t in range(u.shape[1]):
            h = torch.tanh(drive[:, t] + h @ self.recurrent_weight.T)
            states.append(h)
        y = self.readout(torch.stack(states, dim=1))
        return y.squeeze(-1) if self.outputs == 1 else y


@register_model("bias_rnn", summary="tanh RNN over fixed random weights, learned biases (bias-only learning)",
                inputs="sequences", activation=None, readout=lambda net: net.readout,
                tiny_options={"hidden": 8}, tiny_input=(5, 2))
def bias_rnn(
    variant: Variant,
    num_classes: int,
    in_channels: int,
    input_shape: tuple[int, ...],
    hidden: int = 200,
    gain: float = 1.5,
) -> nn.Module:
    # Not written in units (its tanh recurrence is the model): it offers no capability, so
    # build_model refuses every variant but the baseline.
    if len(input_shape) != 2:
        raise ValueError(f"bias_rnn reads sequences (length, inputs), got input shape {input_shape}")
    return BiasRNN(input_shape[1], hidden, num_classes, gain)
