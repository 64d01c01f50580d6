"""Images per second of CIFAR-sized training augmentation: biasbench's batched path vs torchvision's.

    .venv/bin/python benchmarks/data_throughput.py [--images 10000] [--json out.json] [--device cpu]

Paths, all on random uint8 CIFAR-shaped data (N, 3, 32, 32), batch 128, one epoch each after a
warm-up epoch, each timed until the last batch is on the target device:

- `biasbench crop_flip (TensorLoader)`: one gather per batch, no per-sample Python.
- `torchvision PIL + DataLoader(2 workers)`: RandomCrop(32, padding=4) + RandomHorizontalFlip +
  ToTensor + Normalize per PIL image, the classic CIFAR pipeline.
- `torchvision v2 tensor + DataLoader(2 workers)`: the same transforms on uint8 tensor images.
- `biasbench vit (ImageLoader, 2 workers)` (with --vit): the per-image ViT pipeline, for scale.

The ratio printed is biasbench's rate over the *faster* torchvision path. By default the main
process uses one torch thread (`--threads`): the batched path needs a single core, while
torchvision's path gets `--workers` processes besides the main one.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from biasbench.data import DataBundle, Split  # noqa: E402
from biasbench.data.augment import AUGMENTS  # noqa: E402
from biasbench.data.loader import ImageLoader, TensorLoader  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class _PerSample(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.labels[i])


def _time_epochs(loader, device: torch.device, n_images: int, set_epoch=None) -> float:
    """Images per second of the second of two epochs (the first warms workers and caches)."""
    rate = 0.0
    for epoch in range(2):
        if set_epoch is not None:
            set_epoch(epoch)
        t0 = time.perf_counter()
        seen = 0
        for x, _ in loader:
            x = x.to(device)
            seen += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = seen / (time.perf_counter() - t0)
    assert seen >= n_images - 1
    return rate


def run(n: int, batch: int, workers: int, device: torch.device, vit: bool) -> list[dict]:
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import v2

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    bundle = DataBundle(Split(x, y), None, Split(x[:1], y[:1]), "classification", 10, (3, 32, 32), MEAN, STD)
    rows = []

    ours = TensorLoader(bundle, bundle.train, batch, device, shuffle=True, augment=AUGMENTS.get("crop_flip"))
    rows.append({"path": "biasbench crop_flip (TensorLoader)", "device": str(device), "workers": 0,
                 "images_per_s": _time_epochs(ours, device, n, ours.set_epoch)})

    pil_images = [Image.fromarray(img) for img in x.permute(0, 2, 3, 1).numpy()]
    pil_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(MEAN, STD)])
    pil_loader = DataLoader(_PerSample(pil_images, y.numpy(), pil_tf), batch_size=batch, shuffle=True,
                            num_workers=workers, persistent_workers=workers > 0)
    rows.append({"path": f"torchvision PIL + DataLoader({workers} workers)", "device": str(device),
                 "workers": workers, "images_per_s": _time_epochs(pil_loader, device, n)})

    tensor_tf = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    tensor_loader = DataLoader(_PerSample(x, y.numpy(), tensor_tf), batch_size=batch, shuffle=True,
                               num_workers=workers, persistent_workers=workers > 0)
    rows.append({"path": f"torchvision v2 tensor + DataLoader({workers} workers)", "device": str(device),
                 "workers": workers, "images_per_s": _time_epochs(tensor_loader, device, n)})

    if vit:
        loader = ImageLoader(bundle, bundle.train, batch, device, AUGMENTS.get("vit"), workers=workers)
        rows.append({"path": f"biasbench vit (ImageLoader, {workers} workers)", "device": str(device),
                     "workers": workers, "images_per_s": _time_epochs(loader, device, n, loader.set_epoch)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the main process (default 1: the batched path needs one core, "
                        "torchvision gets its worker processes; 0 = torch's default)")
    p.add_argument("--vit", action="store_true", help="also time the per-image ViT pipeline")
    p.add_argument("--json", type=Path, default=None, help="write the rows and the ratio here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = run(args.images, args.batch_size, args.workers, device, args.vit)
    ours = rows[0]["images_per_s"]
    best_tv = max(r["images_per_s"] for r in rows if r["path"].startswith("torchvision"))
    ratio = ours / best_tv
    from tabulate import tabulate

    table = [[r["path"], r["device"], f"{r['images_per_s']:,.0f}", f"{r['images_per_s'] / best_tv:.1f}x"]
             for r in rows]
    print(tabulate(table, headers=["path", "device", "images/s", "vs best torchvision"]))
    print(f"\nbiasbench crop_flip is {ratio:.1f}x the faster torchvision per-sample path "
          f"({args.images} images, batch {args.batch_size}, {torch.get_num_threads()} torch threads)")
    if args.json:
        args.json.write_text(json.dumps({
            "rows": rows, "ratio_vs_best_torchvision": ratio, "images": args.images,
            "batch_size": args.batch_size,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.platform(),
            "cpu_count": torch.multiprocessing.cpu_count(), "numpy": np.__version__}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
