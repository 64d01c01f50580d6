"""DNRT's aggregated response regularisation (ARR, spec section 4) as a loss term.

For every class k and every tapped layer j a running mean `mu_k` of the layer's aggregated
response x (a ViT block's class token, a CNN stage's pooled output) is kept:
`mu_k <- (1 - m) mu_k + m x`, the first sample of a class setting it. The loss of a sample is
`||x - target||_1 / d`, averaged over the batch and the J layers, times lambda. `target: pre`
(the paper) compares x with the mean before x is added, `post` (the authors' code) after, which
is `(1 - m)` times the pre loss. The very first sample of a class has no earlier mean: its loss is
0, and it still counts in the batch average (as in the authors' code).

Updates follow batch order, sample by sample. They are computed in closed form, all at once: for
a sample with c earlier samples of its class in the batch, the pre-target is
`(1-m)^c mu0 + sum_t m (1-m)^(c-1-r_t) x_t` over those earlier samples t (r_t: their own rank),
which is exactly what the sequential loop computes (up to float rounding).

The means are buffers of the loss term, so the trainer saves them with `criterion.state_dict()`
and `--resume` restores them. They carry no gradient. Labels reach this term only in training;
evaluation calls the task loss alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

Target = Literal["pre", "post"]


class ResponseTap:
    """Keeps the reduced outputs of chosen modules from the latest training forward pass.

    A plain object (not a Module), so the loss term that reads it does not take the model's
    parameters into the criterion's state.
    """

    def __init__(self, modules: Sequence[nn.Module], reduce: Callable[[torch.Tensor], torch.Tensor]):
        self.reduce = reduce
        self.values: list[torch.Tensor | None] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if module.training:  # evaluation keeps nothing: ARR never sees evaluation data
                self.values[i] = self.reduce(output)

        return hook

    def take(self) -> list[torch.Tensor]:
        """The responses of the latest forward, each once: a second call without a forward fails."""
        if any(v is None for v in self.values):
            raise RuntimeError("ARR found no responses: run the model's forward in training mode first")
        out = [v for v in self.values if v is not None]
        self.values = [None] * len(self.values)
        return out


class AggregatedResponseLoss(nn.Module):
    """`lam * mean_j mean_i ||x_ij - mu_{y_i, j}||_1 / d_j` with per-class running means."""

    param_roles: dict[str, str] = {}  # none: the means are buffers

    def __init__(
        self,
        tap: ResponseTap | None,
        dims: Sequence[int],
        num_classes: int,
        momentum: float = 0.1,
        lam: float = 10.0,
        target: Target = "pre",
    ):
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"ARR momentum must be in (0, 1], got {momentum}")
        if target not in ("pre", "post"):
            raise ValueError(f"ARR target must be pre or post, got {target!r}")
        self.tap = tap
        self.dims, self.num_classes = list(dims), num_classes
        self.momentum, self.lam, self.target = float(momentum), float(lam), target
        for j, d in enumerate(self.dims):
            self.register_buffer(f"mean_{j}", torch.zeros(num_classes, d))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def means(self) -> list[torch.Tensor]:
        return [getattr(self, f"mean_{j}") for j in range(len(self.dims))]

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.tap is None:
            raise RuntimeError("this ARR term has no response tap: build the model with the arr or dnrt variant")
        return self.loss(self.tap.take(), targets)

    def extra_repr(self) -> str:
        return (
            f"dims={self.dims}, classes={self.num_classes}, momentum={self.momentum}, lam={self.lam}, "
            f"target={self.target}"
        )

    # -------------------------------------------------------------------------------------------
    def loss(self, responses: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """The ARR loss of one batch; updates the running means in batch order."""
        if targets.dtype.is_floating_point or targets.dim() != 1:
            raise ValueError("ARR needs integer class labels of shape (B,)")
        if len(responses) != len(self.dims):
            raise ValueError(f"ARR expected {len(self.dims)} responses, got {len(responses)}")
        y = targets
        m = self.momentum
        with torch.no_grad():
            w_pre, a_pre, first, w_fin, a_fin, present = _update_weights(y, self.num_classes, m)
            seen = self.seen.clone()
            fresh = first & ~seen[y]  # first sample of a class never seen: no earlier mean, loss 0
        total = responses[0].new_zeros(())
        for j, x in enumerate(responses):
            mean = getattr(self, f"mean_{j}")
            with torch.no_grad():
                xd = x.detach().to(torch.float64)
                first_x = torch.zeros(self.num_classes, xd.shape[1], dtype=xd.dtype, device=xd.device)
                first_x[y[first]] = xd[first]
                mu0 = torch.where(seen[:, None], mean.to(xd.dtype), first_x)  # (K, d)
                pre = a_pre[:, None] * mu0[y] + w_pre @ xd  # (B, d): the mean before sample i
                tgt = pre if self.target == "pre" else (1 - m) * pre + m * xd
                final = a_fin[:, None] * mu0 + w_fin @ xd  # (K, d)
                mean[present] = final[present].to(mean.dtype)
            per_sample = (x - tgt.to(x.dtype)).abs().mean(dim=1)  # ||x - mu||_1 / d
            total = total + torch.where(fresh, torch.zeros_like(per_sample), per_sample).mean()
        with torch.no_grad():
            self.seen[present] = True
        return self.lam * total / len(responses)


def _update_weights(y: torch.Tensor, num_classes: int, m: float):
    """Closed-form weights of the sequential running-mean updates over one batch.

    Returns (w_pre (B, B), a_pre (B,), first (B,), w_fin (K, B), a_fin (K,), present (K,)) with
    `mean before sample i = a_pre[i] * mu0[y_i] + w_pre[i] @ x` and
    `mean after the batch = a_fin[k] * mu0[k] + w_fin[k] @ x`, where mu0[k] is the class's mean
    before the batch (or its first sample here, which an update with itself leaves unchanged).
    """
    b = len(y)
    dev = y.device
    same = y[:, None] == y[None, :]
    earlier = same & torch.ones(b, b, dtype=torch.bool, device=dev).tril(-1)  # t < i, same class
    rank = earlier.sum(1).to(torch.float64)  # earlier samples of the same class
    keep = torch.tensor(1.0 - m, dtype=torch.float64, device=dev)
    # sample t, ranked r_t, enters the mean seen by sample i (rank c_i) with m (1-m)^(c_i-1-r_t)
    expo = (rank[:, None] - 1 - rank[None, :]).clamp(min=0)
    w_pre = torch.where(earlier, m * keep.pow(expo), torch.zeros((), dtype=torch.float64, device=dev))
    a_pre = keep.pow(rank)
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)  # n_k
    onehot = torch.nn.functional.one_hot(y, num_classes).T.bool()  # (K, B)
    expo_fin = (counts[:, None] - 1 - rank[None, :]).clamp(min=0)
    w_fin = torch.where(onehot, m * keep.pow(expo_fin), torch.zeros((), dtype=torch.float64, device=dev))
    a_fin = keep.pow(counts)
    return w_pre, a_pre, rank == 0, w_fin, a_fin, counts > 0
