"""Trainer overhead: biasbench's trainer against a bare hand-written PyTorch loop.

    python benchmarks/trainer_overhead.py [--json out.json] [--repeats 3] [--device cpu|cuda]

Both train the same model on the same in-memory data with the same optimiser, batch size and
number of epochs, and both evaluate validation and test sets after every epoch (that is what the
trainer does). The trainer also writes a checkpoint each epoch (with fsync, about 5-10 ms), so
it is timed twice: as shipped, and with `output.checkpoint: false`, which leaves only what the
trainer adds per step. Times are the median of `--repeats` alternating runs; ratios are
trainer / bare loop (target <= 1.05). The cases go from tiny epochs (about 70 ms, where a
checkpoint is a visible share) to epochs of about a second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from biasbench.data import build_data
from biasbench.models import build_model
from biasbench.recipe import from_dict
from biasbench.trainer import train_run

CASES = {
    "cnn64/digits": {"model": {"name": "cnn", "options": {"width": 64}}, "data": {"name": "digits"},
                     "train": {"epochs": 3, "batch_size": 64}},
    "cnn/digits": {"model": {"name": "cnn", "options": {"width": 32}}, "data": {"name": "digits"},
                   "train": {"epochs": 5, "batch_size": 64}},
    "mlp/mnist1d": {"model": {"name": "mlp", "options": {"depth": 3, "width": 256}}, "data": {"name": "mnist1d"},
                    "train": {"epochs": 5, "batch_size": 100}},
}


def bare_loop(recipe, device: torch.device) -> float:
    """The same work written by hand: no registry, no progress bar, no checkpoints, no results."""
    torch.manual_seed(0)
    data = build_data(recipe.data)
    model = build_model(recipe.model.name, num_classes=data.num_outputs, in_channels=data.input_shape[0],
                        input_shape=data.input_shape, **recipe.model.options).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.optim.lr, momentum=recipe.optim.momentum)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) if data.mean else None
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) if data.std else None
    norm = (lambda x: (x - mean) / std) if mean is not None else (lambda x: x)  # noqa: E731
    xs, ys = data.train.x.to(device), data.train.y.to(device)
    evals = [(split.x.to(device), split.y.to(device)) for split in (data.val, data.test)]
    bs = recipe.train.batch_size
    start = time.perf_counter()
    for epoch in range(recipe.train.epochs):
        model.train()
        perm = torch.randperm(len(ys), generator=torch.Generator().manual_seed(epoch)).to(device)
        for i in range(0, len(ys) - 1, bs):
            idx = perm[i:i + bs]
            if len(idx) < 2:
                continue
            loss = torch.nn.functional.cross_entropy(model(norm(xs[idx])), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for ex, ey in evals:
                correct = 0
                for i in range(0, len(ey), recipe.train.eval_batch_size):
                    out = model(norm(ex[i:i + recipe.train.eval_batch_size]))
                    correct += (out.argmax(1) == ey[i:i + recipe.train.eval_batch_size]).sum().item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def trainer_time(recipe, out: Path, device: torch.device, checkpoint: bool = True) -> float:
    recipe.output.checkpoint = checkpoint
    recipe.output.dir = str(out)
    recipe.output.name = f"bench{time.perf_counter_ns()}"
    build_data(recipe.data)  # same warm data cache as the bare loop
    start = time.perf_counter()
    train_run(recipe, seed=0, replicate=0, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both loops train")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device")
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, doc in CASES.items():
            recipe = from_dict({**doc, "optim": {"name": "sgd", "lr": 0.05}})
            bare_loop(recipe, device)  # warm-up: data generation, allocator, kernels
            bare, ours, lean = [], [], []
            for _ in range(args.repeats):
                bare.append(bare_loop(recipe, device))
                ours.append(trainer_time(recipe, Path(tmp), device))
                lean.append(trainer_time(recipe, Path(tmp), device, checkpoint=False))
            b, t, t0 = statistics.median(bare), statistics.median(ours), statistics.median(lean)
            rows.append({"case": name, "epochs": recipe.train.epochs, "bare_loop_s": round(b, 3),
                         "trainer_s": round(t, 3), "ratio": round(t / b, 3),
                         "trainer_no_checkpoint_s": round(t0, 3), "ratio_no_checkpoint": round(t0 / b, 3)})
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "trainer_overhead", "torch": torch.__version__,
                                         "device": args.device,
                                         "threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
