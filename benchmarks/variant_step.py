"""One training step of a registered model's variants against its baseline, side by side.

    .venv/bin/python benchmarks/variant_step.py [--model resnet20_v1] [--variants baseline,dac,preact,mba]
                                                [--batch 128] [--input-size 32] [--reps 5]
                                                [--threads N] [--no-memory] [--json out.json]

A step is forward + cross-entropy + backward + SGD (momentum 0.9) on one random batch, models
from `biasbench.models.build_model(name, variant, num_classes=10, in_channels=3,
input_shape=(3, s, s))`. Time: median of --reps runs, the variants interleaved run by run so
that load from other processes hits all alike; images per second is batch / median. Peak
memory: benchmarks/peak_memory.py (child process, rise of VmHWM over one step). Ratios are
against the baseline measured in the same run. `--variants all` takes every registered variant;
a variant that cannot be built for the model is listed as skipped.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_memory import peak_step_bytes, run_child  # noqa: E402  (benchmarks/)

from biasbench.models import build_model, list_variants  # noqa: E402

DEFAULT_VARIANTS = "baseline,dac,preact,mba"


def build(args, variant: str) -> torch.nn.Module:
    s = args.input_size
    return build_model(args.model, variant, num_classes=10, in_channels=3, input_shape=(3, s, s))


def make_step(args, variant: str) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build(args, variant)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, args.input_size, args.input_size)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def buildable(args, names: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, skipped = [], {}
    for name in names:
        try:
            build(args, name)
            ok.append(name)
        except Exception as exc:  # noqa: BLE001 - a variant this model does not support
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return ok, skipped


def time_all(steps: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    for fn in steps.values():  # warm-up: lazy init, kernel compilation, allocator
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def memory_child(args) -> None:
    res = {}
    for name in args.variants.split(","):
        res[name] = peak_step_bytes(lambda n=name: make_step(args, n))
        gc.collect()
    print(json.dumps(res))


def child_args(args, variants: list[str]) -> list[str]:
    out = ["--memory-child", "--model", args.model, "--variants", ",".join(variants),
           "--batch", str(args.batch), "--input-size", str(args.input_size)]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20_v1")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated, or 'all'")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)

    from rich.console import Console
    from rich.table import Table

    wanted = list_variants() if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    if "baseline" not in wanted:
        wanted.insert(0, "baseline")  # the ratios need it
    wanted = ["baseline"] + [v for v in wanted if v != "baseline"]
    names, skipped = buildable(args, wanted)
    if "baseline" not in names:
        sys.exit(f"the baseline of {args.model} does not build: {skipped.get('baseline')}")

    mem = run_child(__file__, child_args(args, names)) if args.memory else None
    steps = {name: make_step(args, name) for name in names}
    params = {name: sum(p.numel() for p in build(args, name).parameters()) for name in names}
    med = time_all(steps, args.reps)

    base_t, base_m = med["baseline"], (mem or {}).get("baseline")
    records = []
    for name in names:
        rec = {"variant": name, "params": params[name], "step_s": med[name],
               "images_per_s": args.batch / med[name], "time_ratio": med[name] / base_t}
        if mem:
            rec["peak_bytes"] = mem[name]
            rec["memory_ratio"] = mem[name] / base_m if base_m else None
        records.append(rec)

    from biasbench.kernels import dac_cpu  # which DAC path the run took (auto: C++ if it built)
    meta = {"model": args.model, "batch": args.batch, "input_size": args.input_size,
            "reps": args.reps, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cpu", "dac_cpp": dac_cpu._state.get("ok"), "skipped": skipped}
    table = Table(title=f"{args.model} train step: batch {args.batch}, {args.input_size}x"
                        f"{args.input_size}, {meta['threads']} threads, median of {args.reps}")
    for col in ("variant", "params", "step ms", "img/s", "time", "peak MiB", "memory"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in records:
        table.add_row(r["variant"], f"{r['params']:,}", f"{r['step_s'] * 1e3:.1f}",
                      f"{r['images_per_s']:.0f}", f"{r['time_ratio']:.2f}x",
                      f"{r['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in r else "n/a",
                      f"{r['memory_ratio']:.2f}x" if r.get("memory_ratio") else "n/a")
    for name in skipped:
        table.add_row(name, "", "skipped", "", "", "", "", style="dim")
    console = Console()
    console.print(table)
    for name, why in skipped.items():
        console.print(f"[dim]{name}: {why}[/dim]")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": records}, indent=2))


if __name__ == "__main__":
    main()
