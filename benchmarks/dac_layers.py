"""DAC layers against plain (ReLU -> conv / ReLU -> Linear) layers, side by side.

Conv rows: the CIFAR ResNet20 3x3 shapes at --batch. Dense rows: DACLinear against ReLU +
nn.Linear on the DAC paper's SGEMM MLP shapes (141x141, 200x200, 250x250) at --dense-batch.

    .venv/bin/python benchmarks/dac_layers.py [--batch 128] [--dense-batch 256] [--reps 5] [--json out.json]
                                              [--impl auto|cpp|chunked|triton] [--threads N] [--no-resnet]

Time: forward + backward of one layer (and one SGD training step of a whole ResNet20), median
of --reps runs, plain and DAC interleaved run by run so that load from other processes hits
both alike; ratios are DAC / plain.
Peak memory: measured in a child process started with MALLOC_MMAP_THRESHOLD_=65536 (every
tensor-sized allocation is its own mmap and goes back to the OS when freed), as the rise of the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs before each measurement)
over the resident set just before the forward pass. It counts everything the step touches:
tensors, saved activations, gradients, and kernel scratch buffers. Linux only; elsewhere it is
reported as unavailable.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_memory import peak_step_bytes, run_child  # noqa: E402  (benchmarks/)

from biasbench.layers import BatchNorm2dNoShift, DACConv2d, DACLinear  # noqa: E402

# (in, out, spatial size, stride) of the 3x3 convs in a CIFAR ResNet20.
LAYERS = [(16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)]
# (in, out) of the hidden layers of the DAC paper's SGEMM MLPs.
DENSE = [(141, 141), (200, 200), (250, 250)]


# -- a CIFAR ResNet20 v1 with option-A shortcuts, baseline and DAC (spec section 1) ----------

class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dac: bool, impl: str):
        super().__init__()
        if dac:  # DAC -> BN' -> DAC -> BN' -> +input
            self.c1 = DACConv2d(cin, cout, 3, stride, 1, impl=impl)
            self.c2 = DACConv2d(cout, cout, 3, 1, 1, impl=impl)
            self.b1, self.b2 = BatchNorm2dNoShift(cout), BatchNorm2dNoShift(cout)
        else:  # conv -> BN -> ReLU -> conv -> BN -> +input -> ReLU
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b1, self.b2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.dac, self.stride, self.pad = dac, stride, cout - cin

    def forward(self, x):
        h = self.b1(self.c1(x))
        h = self.b2(self.c2(h if self.dac else torch.relu(h)))
        sc = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return h + sc if self.dac else torch.relu(h + sc)


def resnet20(dac: bool, impl: str = "auto", classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False),
                               BatchNorm2dNoShift(16) if dac else nn.BatchNorm2d(16)]
    if not dac:
        layers.append(nn.ReLU())
    cin = 16
    for cout, stride in [(16, 1), (32, 2), (64, 2)]:
        for b in range(3):
            layers.append(_Block(cin, cout, stride if b == 0 else 1, dac, impl))
            cin = cout
    if not dac:
        layers.append(nn.ReLU())
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               DACLinear(64, classes, impl="chunked") if dac else nn.Linear(64, classes)]
    return nn.Sequential(*layers)


# -- the steps measured -------------------------------------------------------------------------

def layer_step(cin: int, cout: int, hw: int, stride: int, batch: int, dac: bool,
               impl: str) -> Callable[[], None]:
    torch.manual_seed(0)
    z = torch.randn(batch, cin, hw, hw, requires_grad=True)
    if dac:
        layer = DACConv2d(cin, cout, 3, stride, 1, impl=impl)
        with torch.no_grad():
            layer.unshared_bias.normal_(0, 0.1)
        fn = layer
    else:
        conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)

        def fn(x):
            return conv(torch.relu(x))

    def step():
        out = fn(z)
        out.backward(torch.ones_like(out))
    return step


def dense_step(cin: int, cout: int, batch: int, dac: bool, impl: str) -> Callable[[], None]:
    torch.manual_seed(0)
    z = torch.randn(batch, cin, requires_grad=True)
    if dac:
        # the fused kernels are CPU / ReLU only; "triton" means chunked for DACLinear
        layer = DACLinear(cin, cout, impl="chunked" if impl == "triton" else impl)
        with torch.no_grad():
            layer.unshared_bias.normal_(0, 0.1)
        fn = layer
    else:
        lin = nn.Linear(cin, cout)

        def fn(x):
            return lin(torch.relu(x))

    def step():
        out = fn(z)
        out.backward(torch.ones_like(out))
    return step


def resnet_step(batch: int, dac: bool, impl: str) -> Callable[[], None]:
    torch.manual_seed(0)
    model = resnet20(dac, impl)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def cases(args) -> list[tuple[str, Callable[[bool], Callable[[], None]]]]:
    out = [(f"conv {ci}->{co} {hw}x{hw} s{s}",
            lambda dac, c=(ci, co, hw, s): layer_step(*c, args.batch, dac, args.impl))
           for ci, co, hw, s in LAYERS]
    out += [(f"dense {ci}x{co} b{args.dense_batch}",
             lambda dac, c=(ci, co): dense_step(*c, args.dense_batch, dac, args.impl))
            for ci, co in DENSE]
    if args.resnet:
        out.append(("ResNet20 train step", lambda dac: resnet_step(args.batch, dac, args.impl)))
    return out


def time_pair(plain: Callable[[], None], dac: Callable[[], None], reps: int) -> tuple[float, float]:
    plain(), dac()  # warm-up: lazy init, kernel compilation, allocator
    tp, td = [], []
    for _ in range(reps):
        for fn, acc in ((plain, tp), (dac, td)):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return statistics.median(tp), statistics.median(td)


# -- peak memory (child process; benchmarks/peak_memory.py) ------------------------------------

def memory_child(args) -> None:
    res = {}
    for name, make in cases(args):
        res[name] = [peak_step_bytes(lambda m=make: m(False)), peak_step_bytes(lambda m=make: m(True))]
        gc.collect()
    print(json.dumps(res))


def measure_memory(args) -> dict[str, list[int]] | None:
    cmd = ["--memory-child", "--batch", str(args.batch), "--dense-batch", str(args.dense_batch),
           "--impl", args.impl]
    if not args.resnet:
        cmd.append("--no-resnet")
    return run_child(__file__, cmd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dense-batch", type=int, default=256, help="batch of the dense rows")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--impl", default="auto", choices=["auto", "cpp", "chunked", "triton"])
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-resnet", dest="resnet", action="store_false")
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)

    from tabulate import tabulate

    from biasbench.kernels import dac_cpu, dac_linear_cpu
    impl = dense_impl = args.impl
    if impl == "auto":
        impl = "cpp" if dac_cpu.available() else "chunked"
        dense_impl = "cpp" if dac_linear_cpu.available() else "chunked"
    mem = measure_memory(args) if args.memory else None
    rows, records = [], []
    for name, make in cases(args):
        tp, td = time_pair(make(False), make(True), args.reps)
        rec = {"case": name, "plain_s": tp, "dac_s": td, "time_ratio": td / tp}
        if mem:
            mp, md = mem[name]
            rec.update(plain_peak_bytes=mp, dac_peak_bytes=md, memory_ratio=md / mp if mp else None)
        records.append(rec)
        rows.append([name, f"{tp * 1e3:.1f}", f"{td * 1e3:.1f}", f"{td / tp:.2f}x",
                     f"{mem[name][0] / 2**20:.1f}" if mem else "n/a",
                     f"{mem[name][1] / 2**20:.1f}" if mem else "n/a",
                     f"{rec['memory_ratio']:.2f}x" if mem and rec.get("memory_ratio") else "n/a"])
        gc.collect()
    meta = {"batch": args.batch, "dense_batch": args.dense_batch, "reps": args.reps, "impl": impl,
            "dense_impl": dense_impl, "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu"}
    print(f"DAC vs ReLU+conv / ReLU+Linear, batch {args.batch} (dense {args.dense_batch}), "
          f"impl={impl} (dense {dense_impl}), {meta['threads']} threads, median of {args.reps}")
    print(tabulate(rows, headers=["case", "plain ms", "DAC ms", "time", "plain MiB", "DAC MiB",
                                  "memory"]))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": records}, indent=2))


if __name__ == "__main__":
    main()
