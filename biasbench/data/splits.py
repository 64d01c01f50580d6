"""Validation splits carved out of a training set: a stratified fraction or fold k of K.

Both are fixed by a seed, independent of the run seed, so replicates differ in initialisation
and data order but not in which images they validate on (unless the recipe asks for folds).
"""

from __future__ import annotations

import torch


def _stratified_order(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Per class, that class's indices in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    if labels.dtype.is_floating_point:  # regression: one "class"
        return [torch.randperm(len(labels), generator=g)]
    out = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        out.append(idx[torch.randperm(len(idx), generator=g)])
    return out


def fraction_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): `fraction` of every class goes to validation."""
    train, val = [], []
    for idx in _stratified_order(labels, seed):
        n_val = int(round(len(idx) * fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


def kfold_split(labels: torch.Tensor, folds: int, fold: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) for fold `fold` of a stratified `folds`-fold partition."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is outside 0..{folds - 1}")
    train, val = [], []
    for idx in _stratified_order(labels, seed):
        # Deal each class's shuffled indices round-robin into folds: sizes differ by at most 1.
        in_fold = (torch.arange(len(idx)) % folds) == fold
        val.append(idx[in_fold])
        train.append(idx[~in_fold])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


def validation_split(labels: torch.Tensor, cfg, replicate: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Apply the recipe's `data.val_*` settings; returns indices and a record for the results."""
    if cfg.val_folds:
        fold = cfg.val_fold if cfg.val_fold is not None else replicate % cfg.val_folds
        tr, va = kfold_split(labels, cfg.val_folds, fold, cfg.split_seed)
        return tr, va, {"val_split": "kfold", "val_folds": cfg.val_folds, "val_fold": fold,
                        "split_seed": cfg.split_seed}
    tr, va = fraction_split(labels, cfg.val_fraction, cfg.split_seed)
    if len(va) == 0:  # val_fraction 0 (the DNRT authors' protocol): epochs can only be told apart on test
        return tr, va, {"val_split": "none"}
    return tr, va, {"val_split": "fraction", "val_fraction": cfg.val_fraction, "split_seed": cfg.split_seed}
