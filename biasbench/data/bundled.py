"""Data that ships inside installed packages, so tests and the quick start run offline.

- `digits`: scikit-learn's 8x8 digits as 1x8x8 images (1,797 samples), a fixed stratified
  20% test split, validation carved from the rest by the recipe's settings.
- `mnist1d`: MNIST-1D from the `mnist1d` package, its standard 4,000/1,000 split (seed 42);
  `options.num_samples` generates a larger set with the same 80/20 split.
- `synthetic`: Gaussian clusters (classification) or a smooth random function (regression).
"""

from __future__ import annotations

import functools

import torch

from biasbench.data import DataBundle, DatasetInfo, Split, register_dataset
from biasbench.data.splits import fraction_split, validation_split
from biasbench.errors import UserError, did_you_mean

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0  # the test set never moves


def check_options(name: str, options: dict, allowed: dict) -> dict:
    """`data.options` of data set `name` merged over its defaults `allowed`; an unknown option is
    one line naming it and the options there are."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        there = f"its options: {', '.join(sorted(allowed))}" if allowed else "it has no options"
        raise UserError(f"data.options: data set `{name}` has no option `{unknown[0]}`"
                        f"{did_you_mean(unknown[0], allowed)}; {there}")
    return {**allowed, **options}


def _with_validation(cfg, replicate: int, x: torch.Tensor, y: torch.Tensor) -> tuple[Split, Split | None, dict]:
    tr, va, info = validation_split(y, cfg, replicate)
    val = Split(x[va], y[va]) if len(va) else None
    return Split(x[tr], y[tr]), val, info


@register_dataset("digits", DatasetInfo("scikit-learn's 8x8 handwritten digits", bundled=True,
                                          kind="images", shape=lambda o: ((1, 8, 8), 10)))
def digits(cfg, replicate: int = 0) -> DataBundle:
    from sklearn.datasets import load_digits

    check_options("digits", cfg.options, {})
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    rest, test = fraction_split(y, _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
    train, val, info = _with_validation(cfg, replicate, x[rest], y[rest])
    mean, std = train.x.mean().item(), train.x.std().item()
    return DataBundle(train, val, Split(x[test], y[test]), "classification", 10, (1, 8, 8),
                      mean=(mean,), std=(std,), info={"source": "sklearn.datasets.load_digits", **info})


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, seed: int):
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    return make_dataset(args)


@register_dataset("mnist1d", DatasetInfo("MNIST-1D (mnist1d package), 40 features", bundled=True,
                                           kind="features", shape=lambda o: ((40,), 10)))
def mnist1d(cfg, replicate: int = 0) -> DataBundle:
    opts = check_options("mnist1d", cfg.options, {"num_samples": 5000, "seed": 42})
    if opts["num_samples"] < 50:
        raise UserError("data.options.num_samples for mnist1d must be at least 50")
    d = _mnist1d_arrays(int(opts["num_samples"]), int(opts["seed"]))
    x = torch.tensor(d["x"], dtype=torch.float32)
    y = torch.tensor(d["y"], dtype=torch.int64)
    train, val, info = _with_validation(cfg, replicate, x, y)
    test = Split(torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"], dtype=torch.int64))
    return DataBundle(train, val, test, "classification", 10, (40,),
                      info={"source": "mnist1d.make_dataset", **opts, **info})


def _synthetic_shape(o: dict) -> tuple[tuple[int, ...], int]:
    regression = o.get("task", "classification") == "regression"
    return (int(o.get("features", 16)),), 1 if regression else int(o.get("classes", 4))


@register_dataset("synthetic", DatasetInfo("Gaussian clusters or a smooth regression (option task)", bundled=True,
                                             kind="features", task="classification or regression",
                                             shape=_synthetic_shape))
def synthetic(cfg, replicate: int = 0) -> DataBundle:
    opts = check_options("synthetic", cfg.options, {"task": "classification", "num_samples": 2000,
                                                      "features": 16, "classes": 4, "noise": 1.0, "seed": 0})
    if opts["task"] not in ("classification", "regression"):
        raise UserError("data.options.task for synthetic must be classification or regression")
    g = torch.Generator().manual_seed(int(opts["seed"]))
    n, f = int(opts["num_samples"]), int(opts["features"])
    x = torch.randn(n, f, generator=g)
    if opts["task"] == "classification":
        k = int(opts["classes"])
        centres = torch.randn(k, f, generator=g) * 2.0
        y = torch.randint(0, k, (n,), generator=g)
        x = centres[y] + float(opts["noise"]) * x
        outputs = k
    else:
        w = torch.randn(f, generator=g) / f**0.5
        y = torch.sin(2 * x @ w) + 0.5 * (x[:, 0] * x[:, 1]) + 0.05 * float(opts["noise"]) * torch.randn(n, generator=g)
        outputs = 1
    rest, test = fraction_split(y if opts["task"] == "classification" else y.float(), 0.2, 0)
    train, val, info = _with_validation(cfg, replicate, x[rest], y[rest])
    return DataBundle(train, val, Split(x[test], y[test]), opts["task"], outputs, (f,),
                      info={"source": "synthetic", **opts, **info})
