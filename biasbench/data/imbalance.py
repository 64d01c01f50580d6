"""Long-tailed training sets: the exponential profile of Cui et al. 2019 (`data.options.imbalance`).

For K classes and an imbalance factor beta >= 1 (the largest class over the smallest), class i
keeps `n_i = int(n_max * beta ** (-i / (K - 1)))` training images, where n_max is the number of
training images per class in the files (the smallest class's count if they differ, so every
class has enough). Which images are kept is fixed (seed 0 per class, like the test split of
sets without one): replicates differ in initialisation and order, not in their data. The test
set is left as it is (balanced for CIFAR); validation, if any, is then carved out of the
long-tailed set and is long-tailed too.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from biasbench.errors import UserError

SUBSET_SEED = 0
PROFILE = "exponential (Cui et al. 2019): n_i = int(n_max * beta ** (-i / (K - 1)))"


def check_imbalance(name: str, beta: Any) -> float | None:
    """`data.options.imbalance` as a number >= 1, or None (off); one line for anything else."""
    if beta is None:
        return None
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise UserError(f"data.options.imbalance for `{name}` must be a number (the largest class over the "
                        f"smallest, e.g. 100), got {beta!r}")
    if beta < 1:
        raise UserError(f"data.options.imbalance for `{name}` is {beta}, but an imbalance factor is the largest "
                        "class over the smallest, so at least 1 (1 keeps the set balanced)")
    return float(beta)


def exponential_profile(n_max: int, num_classes: int, beta: float) -> list[int]:
    """Images kept per class, head (class 0) to tail."""
    if num_classes == 1:
        return [n_max]
    return [int(n_max * beta ** (-i / (num_classes - 1))) for i in range(num_classes)]


def long_tailed_subset(name: str, y: torch.Tensor, num_classes: int, beta: float
                       ) -> tuple[torch.Tensor, dict[str, Any]]:
    """(sorted indices of the kept training images, a record for the results)."""
    available = torch.bincount(y, minlength=num_classes)
    n_max = int(available.min())
    counts = exponential_profile(n_max, num_classes, beta)
    if counts[-1] < 1:
        raise UserError(f"data.options.imbalance {beta:g} leaves class {num_classes - 1} of `{name}` without images "
                        f"({n_max} per class in the files); use a smaller factor or more images")
    g = torch.Generator().manual_seed(SUBSET_SEED)
    kept = []
    for c, n in enumerate(counts):
        idx = torch.nonzero(y == c).flatten()
        kept.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    record = {"beta": beta, "profile": PROFILE, "n_max": n_max, "class_counts": counts, "subset_seed": SUBSET_SEED}
    return torch.sort(torch.cat(kept)).values, record
