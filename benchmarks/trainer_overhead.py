"""Trainer overhead: biasbench's trainer against a bare hand-written PyTorch loop.

    python benchmarks/trainer_overhead.py [--json out.json] [--repeats 5] [--device cpu|cuda] [--cases ...]

Both train the same model on the same in-memory data with the same optimiser, batch size and
number of epochs, and both evaluate validation and test sets after every epoch (that is what the
trainer does). The trainer also keeps the test predictions of every epoch, rewrites metrics.csv
and writes a checkpoint each epoch (with fsync, about 5-10 ms; the best-validation copy is a
hard link), so it is timed twice: as shipped, and with `output.checkpoint: false`, which leaves
what the trainer adds per step and per epoch besides the checkpoint. Times are the minimum of
`--repeats` alternating runs (the least disturbed one on a shared machine), as wall time and as
this process's CPU time (steadier when other processes share the cores; it leaves out waiting
for fsync); ratios are trainer / bare loop (target <= 1.05). The cases go from tiny epochs
(about 70 ms, where a checkpoint is a visible share) to epochs of about a second. Run it with
PYTHONPATH pointing at another checkout to measure that checkout's trainer with the same script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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
    # CIFAR-shaped (3 x 32 x 32, 10 classes, 10,000 generated images): the GPU case (issue 15);
    # minutes per repeat on a CPU, so only with --cases or on --device cuda.
    "resnet20/cifar-shaped": {"model": {"name": "resnet20_v1"},
                              "data": {"name": "synthetic_images",
                                       "options": {"classes": 10, "num_samples": 10000}},
                              "train": {"epochs": 2, "batch_size": 128}},
    # The real data (`make real-data`): MNIST's MLP 784-256-256-10 (3 epochs of under a second each:
    # one epoch would mostly time the run's set-up) and the small CNN on 20,000 Fashion-MNIST
    # images; run by default when data/ holds them.
    "mlp/mnist": {"model": {"name": "mlp", "options": {"depth": 2, "width": 256}},
                  "data": {"name": "mnist", "root": "data/mnist"}, "train": {"epochs": 3, "batch_size": 128}},
    "cnn/fashion": {"model": {"name": "cnn", "options": {"width": 16}},
                    "data": {"name": "fashion_mnist", "root": "data/fashion_mnist",
                             "options": {"train_size": 20000}}, "train": {"epochs": 1, "batch_size": 128}},
}
CPU_CASES = ("cnn64/digits", "cnn/digits", "mlp/mnist1d")
REAL_CASES = ("mlp/mnist", "cnn/fashion")


class Clock:
    """Wall time and this process's CPU time (which other processes on a shared machine do not
    inflate, but which leaves out waiting for the disk)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bare_loop(recipe, device: torch.device) -> Clock:
    """The same work written by hand: no registry, no progress bar, no checkpoints, no results."""
    torch.manual_seed(0)
    data = build_data(recipe.data)
    model = build_model(recipe.model.name, num_classes=data.num_outputs, in_channels=data.input_shape[0],
                        input_shape=data.input_shape, **recipe.model.options).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.optim.lr, momentum=recipe.optim.momentum)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) if data.mean else None
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) if data.std else None
    norm = (lambda x: (x - mean) / std) if mean is not None else (lambda x: x)  # noqa: E731
    with Clock() as clock:
        _bare_epochs(recipe, data, model, opt, norm, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return clock


def _bare_epochs(recipe, data, model, opt, norm, device: torch.device) -> None:
    xs, ys = data.train.x.to(device), data.train.y.to(device)
    evals = [(split.x.to(device), split.y.to(device)) for split in (data.val, data.test) if split is not None]
    bs = recipe.train.batch_size
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


def trainer_time(recipe, out: Path, device: torch.device, checkpoint: bool = True) -> Clock:
    recipe.output.checkpoint = checkpoint
    recipe.output.dir = str(out)
    recipe.output.name = f"bench{time.perf_counter_ns()}"
    build_data(recipe.data)  # same warm data cache as the bare loop
    with Clock() as clock:
        train_run(recipe, seed=0, replicate=0, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return clock


def _row(name: str, epochs: int, bare: list[Clock], ours: list[Clock], lean: list[Clock]) -> dict:
    """Minimum over repeats, wall and CPU; ratios against the bare loop."""
    row = {"case": name, "epochs": epochs}
    for clock in ("wall", "cpu"):
        b, t, t0 = (min(getattr(c, clock) for c in runs) for runs in (bare, ours, lean))
        row.update({f"bare_{clock}_s": round(b, 3), f"trainer_{clock}_s": round(t, 3),
                    f"ratio_{clock}": round(t / b, 3), f"ratio_{clock}_no_ckpt": round(t0 / b, 3)})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both loops train")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=None,
                    help="default: the small cases on the CPU, every case on CUDA")
    args = ap.parse_args()
    real = [c for c in REAL_CASES if Path(CASES[c]["data"]["root"]).is_dir()]
    cases = args.cases or (list(CASES) if args.device == "cuda" else [*CPU_CASES, *real])
    if not args.cases and len(real) < len(REAL_CASES):
        print("note: the real-data cases need `make real-data` (data/mnist, data/fashion_mnist); left out")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device")
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in cases:
            doc = CASES[name]
            recipe = from_dict({**doc, "optim": {"name": "sgd", "lr": 0.05}})
            bare_loop(recipe, device)  # warm-up: data generation, allocator, kernels
            bare, ours, lean = [], [], []
            for _ in range(args.repeats):
                bare.append(bare_loop(recipe, device))
                ours.append(trainer_time(recipe, Path(tmp), device))
                lean.append(trainer_time(recipe, Path(tmp), device, checkpoint=False))
            rows.append(_row(name, recipe.train.epochs, bare, ours, lean))
    machine = _machine()
    print(f"{machine['cpu']}, {machine['cores']} cores, load average {machine['load_average']:.1f}, "
          f"biasbench from {machine['biasbench']}")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    if args.json:
        doc = {"benchmark": "trainer_overhead", "torch": torch.__version__, "threads": torch.get_num_threads(),
               "repeats": args.repeats, "device": args.device, **machine, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1))


def _machine() -> dict:
    """What was measured where: the CPU model, cores, load (other processes), the checkout."""
    import biasbench
    from biasbench.env import git_revision

    cpu = platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
            "biasbench": str(Path(biasbench.__file__).parent), "git_revision": git_revision()}


if __name__ == "__main__":
    main()
