r"""One training step of a model's variants against its baseline, side by side.

Examples:
  python benchmarks/variant_step.py                # ResNet20 v1, 6 variants
  python benchmarks/variant_step.py --model vit_tiny_patch4 --activation gelu \
      --variants baseline,raa,dnrt --batch 64 --threads 1,2
  python benchmarks/variant_step.py --preset readme --json readme.json
  python benchmarks/variant_step.py --from-json readme.json --markdown
  python benchmarks/variant_step.py --isa avx2 --variants baseline,dac
  python benchmarks/variant_step.py --preset mnist_mlp --reps 41   # issue 22
  python benchmarks/variant_step.py --preset issue22 --no-memory --json out.json
  python benchmarks/variant_step.py --device cuda --amp bf16 --channels-last \
      --compile --model resnet20_v1,vit_tiny_patch4 --variants all

This script is the one place the variants' speed and memory ratios come from
(README and docs/dac_layers.md quote its output). A step is forward + loss (the
trainer's: cross-entropy plus the loss terms a variant attaches, ARR) + backward
+ SGD (momentum 0.9) on one random batch. Each (model, activation, thread count)
is a section with its own baseline. The variants run interleaved, rep by rep,
so that load from other processes hits all alike; the table gives the median
step, the ratio of medians (`time`) and of the fastest steps (`min`). Peak
memory on the CPU: benchmarks/peak_memory.py (a child process, rise of VmHWM
over one step); on CUDA: the rise of max_memory_allocated. The JSON records the
machine, the kernel builds that ran and /proc/loadavg before and after. A
variant that a model cannot take is listed as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import CLOCKS, ISA_ENV, cpu_name, describe, kernel_paths, loadavg, reexec_for_isa  # noqa: E402
from peak_memory import peak_step_bytes, run_child  # noqa: E402  (benchmarks/)
from perf_table import step_figures  # noqa: E402

from biasbench.errors import UserError  # noqa: E402
from biasbench.losses import Criterion  # noqa: E402
from biasbench.models import build_model, list_variants, model_hooks  # noqa: E402
from biasbench.optim import build_optimizer  # noqa: E402
from biasbench.recipe import OptimConfig  # noqa: E402

DEFAULT_VARIANTS = "baseline,dac,preact,mba,raa,dnrt"
# The README's performance table: ResNet20 v1 in every variant on 1 and 2 threads (ReLU, the DAC
# paper's setting); RAA and DNRT (RAA + ARR over the three stages) against the GELU baseline on
# ResNet20 and on DNRT's own ViT-Tiny (the targets of issue 15).
PRESETS = {
    "readme": [
        {"model": "resnet20_v1", "variants": "all", "activation": "relu", "threads": [1, 2], "batch": 128},
        {"model": "resnet20_v1", "variants": "baseline,raa,dnrt", "activation": "gelu", "threads": [1, 2],
         "batch": 128},
        {"model": "vit_tiny_patch4", "variants": "baseline,raa,dnrt", "activation": "gelu", "threads": [2],
         "batch": 64},
    ],
    # Issue 22: the dense DAC MLP on MNIST shapes (784 inputs, two hidden layers of 256; the DAC
    # twin narrows them by sqrt(2), as `biasbench train` builds it), batch 128, 1 and 2 threads.
    "mnist_mlp": [
        {"model": "mlp", "variants": "baseline,dac", "activation": "relu", "threads": [1, 2], "batch": 128,
         "in_channels": 1, "input_size": 28, "options": {"depth": 2, "width": 256}},
    ],
}
# Issue 22's step rows (benchmarks/perf_table.py): ResNet20 v1 DAC against its baseline, RAA against
# the GELU baseline on ResNet20 and ViT-Tiny, and the MNIST MLP; fewer variants than `readme`, so
# more repetitions fit the few minutes of benchmarks/perf_all.py.
PRESETS["issue22"] = [
    {"model": "resnet20_v1", "variants": "baseline,dac", "activation": "relu", "threads": [1, 2], "batch": 128},
    {"model": "resnet20_v1", "variants": "baseline,raa", "activation": "gelu", "threads": [1, 2], "batch": 128},
    {"model": "vit_tiny_patch4", "variants": "baseline,raa", "activation": "gelu", "threads": [2], "batch": 64},
    *PRESETS["mnist_mlp"],
]
SCHEMA = "biasbench-variant-step/1"


# -- one section: a model, an activation, a thread count ---------------------------------------

def build(sec: dict, variant: str) -> torch.nn.Module:
    """The section's activation reaches every variant and the model (a variant option)."""
    s, c = sec["input_size"], sec.get("in_channels", 3)
    return build_model(sec["model"], variant, num_classes=10, in_channels=c, input_shape=(c, s, s),
                       variant_options={"activation": sec["activation"]}, **sec.get("options", {}))


def loss_terms(model: torch.nn.Module) -> dict:
    """The stateful loss terms a variant attaches (ARR), as the trainer takes them."""
    hooks = model_hooks(model)
    return dict(hooks.loss_terms) if hooks else {}


def make_step(sec: dict, variant: str) -> Callable[[], None]:
    torch.manual_seed(0)
    device = torch.device(sec["device"])
    model = build(sec, variant).to(device)
    criterion = Criterion("classification", 0.0, loss_terms(model)).to(device)
    model.train()
    fmt = torch.channels_last if sec["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt, _ = build_optimizer(model, OptimConfig(name="sgd", lr=0.01, momentum=0.9, nesterov=False,
                                                weight_decay=0.0, bias_weight_decay=0.0))  # the trainer's (fused) SGD
    x = torch.randn(sec["batch"], sec.get("in_channels", 3), sec["input_size"], sec["input_size"], device=device)
    x = x.contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (sec["batch"],), device=device)
    forward = torch.compile(model) if sec["compile"] else model

    def autocast():
        if sec["amp"] == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = criterion(forward(x), y)
        loss.backward()
        opt.step()
    return step


def buildable(sec: dict, names: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, skipped = [], {}
    for name in names:
        try:
            build(sec, name)
        except UserError as exc:  # the pair does not apply: build_model says why, in one line
            skipped[name] = str(exc)
            continue
        ok.append(name)
    return ok, skipped


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_all(steps: dict[str, Callable[[], None]], reps: int, device: str, clock: str) -> dict[str, list[float]]:
    now = CLOCKS[clock]
    for fn in steps.values():  # warm-up: lazy init, kernel builds, compilation, allocator
        fn()
        fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, fn in steps.items():
            sync(device)
            t = now()
            fn()
            sync(device)
            times[name].append(now() - t)
    return times


def cuda_peak_bytes(make: Callable[[], Callable[[], None]]) -> int:
    step = make()
    step()
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def section_args(sec: dict) -> list[str]:
    out = ["--model", sec["model"], "--activation", sec["activation"], "--batch", str(sec["batch"]),
           "--input-size", str(sec["input_size"]), "--threads", str(sec["threads"]),
           "--device", sec["device"], "--in-channels", str(sec.get("in_channels", 3)),
           "--options", json.dumps(sec.get("options", {}))]
    return out + (["--channels-last"] if sec["channels_last"] else []) + (
        ["--amp", sec["amp"]] if sec["amp"] else [])


def memory(sec: dict, names: list[str]) -> dict[str, int] | None:
    if sec["device"] == "cuda":
        return {n: cuda_peak_bytes(lambda n=n: make_step(sec, n)) for n in names}
    return run_child(__file__, ["--memory-child", "--variants", ",".join(names), *section_args(sec)])


def memory_child(sec: dict, names: list[str]) -> None:
    res = {}
    for name in names:
        res[name] = peak_step_bytes(lambda n=name: make_step(sec, n))
        gc.collect()
    print(json.dumps(res))


def run_section(sec: dict, reps: int, with_memory: bool, clock: str) -> dict:
    torch.set_num_threads(sec["threads"])
    given = sec["variants"]
    wanted = list_variants() if given == "all" else [v.strip() for v in given.split(",") if v.strip()]
    wanted = ["baseline"] + [v for v in wanted if v != "baseline"]  # the ratios need it, first
    names, skipped = buildable(sec, wanted)
    if "baseline" not in names:
        sys.exit(f"the baseline of {sec['model']} does not build: {skipped.get('baseline')}")
    load_before = loadavg()
    mem = memory(sec, names) if with_memory else None
    steps = {name: make_step(sec, name) for name in names}
    params = {name: sum(p.numel() for p in build(sec, name).parameters()) for name in names}
    times = time_all(steps, reps, sec["device"], clock)
    med = {n: statistics.median(ts) for n, ts in times.items()}
    low = {n: min(ts) for n, ts in times.items()}
    records = []
    for name in names:
        rec = {"variant": name, "params": params[name], "step_s": med[name], "step_min_s": low[name],
               "images_per_s": sec["batch"] / med[name], "time_ratio": med[name] / med["baseline"],
               "time_ratio_min": low[name] / low["baseline"]}
        if mem:
            rec["peak_bytes"] = mem[name]
            rec["memory_ratio"] = mem[name] / mem["baseline"] if mem["baseline"] else None
        records.append(rec)
    return {**sec, "reps": reps, "clock": clock, "loadavg_before": load_before, "loadavg_after": loadavg(),
            "skipped": skipped, "results": records}


# -- output -------------------------------------------------------------------------------------

def title(sec: dict) -> str:
    extra = "".join(f", {k}" for k in ("channels_last", "compile") if sec.get(k))
    amp = f", {sec['amp']}" if sec.get("amp") else ""
    return (f"{sec['model']} ({sec['activation']}) on {sec['device']}{amp}{extra}: batch "
            f"{sec['batch']}, {sec['threads']} thread{'s' if sec['threads'] > 1 else ''}, "
            f"median of {sec['reps']}, {sec.get('clock', 'wall')} clock")


def cells(r: dict) -> list[str]:
    return [r["variant"], f"{r['params']:,}", f"{r['step_s'] * 1e3:.1f}", f"{r['time_ratio']:.2f}x",
            f"{r['time_ratio_min']:.2f}x",
            f"{r['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in r else "n/a",
            f"{r['memory_ratio']:.2f}x" if r.get("memory_ratio") else "n/a"]


HEADERS = ["variant", "params", "step ms", "time", "min", "peak MiB", "memory"]


def print_terminal(sec: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title(sec))
    for col in HEADERS:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in sec["results"]:
        table.add_row(*cells(r))
    for name in sec["skipped"]:
        table.add_row(name, "", "skipped", "", "", "", "", style="dim")
    console = Console()
    console.print(table)
    for name, why in sec["skipped"].items():
        console.print(f"[dim]{name}: {why}[/dim]")


def print_plain(sec: dict) -> None:
    """One grep-able line per variant (stdout is not a terminal): model, activation,
    device/threads, variant, median step, time and min ratios, memory ratio."""
    head = f"{sec['model']} {sec['activation']} {sec['device']}/{sec['threads']}t"
    for r in sec["results"]:
        c = dict(zip(HEADERS, cells(r)))
        print(f"{head} {r['variant']} {c['step ms']}ms time={c['time']} min={c['min']} mem={c['memory']}")
    for name, why in sec["skipped"].items():
        print(f"{head} {name} skipped: {why}")


def markdown(doc: dict) -> str:
    """The README block: one table for all sections, the machine, the clock and what was skipped."""
    secs = doc["sections"]
    loads = sorted({s["loadavg_before"].split()[0] for s in secs if s["loadavg_before"]})
    clocks = sorted({s.get("clock", "wall") for s in secs})
    work = any(s.get("clock") == "cpu" and s["threads"] > 1 for s in secs)
    lines = [f"Measured on {doc['meta']['machine']}, {' and '.join(clocks)} clock"
             + (" (rows with 2 or more threads compare CPU time summed over the threads: work, not "
                "latency)" if work else "")
             + f". Load average at the start of the sections: {', '.join(loads) or 'unknown'}. "
             "Ratios are against the baseline of the same model, activation and thread count; "
             "`time` compares medians, `min` the fastest steps.",
             "",
             "| model | act. | batch | threads | variant | step ms | time | min | memory |",
             "|---|---|---|---|---|---|---|---|---|"]
    for sec in secs:
        for r in sec["results"]:
            c = dict(zip(HEADERS, cells(r)))
            lines.append(f"| {sec['model']} | {sec['activation']} | {sec['batch']} | {sec['threads']} | "
                         f"{r['variant']} | {c['step ms']} | {c['time']} | {c['min']} | {c['memory']} |")
    skipped = sorted({f"{s['model']} {name} ({why})" for s in secs for name, why in s["skipped"].items()})
    if skipped:
        lines += ["", "Not built: " + "; ".join(skipped) + "."]
    return "\n".join(lines)


def sections_from_args(args) -> list[dict]:
    common = {"input_size": args.input_size, "device": args.device, "amp": args.amp,
              "channels_last": args.channels_last, "compile": args.compile, "in_channels": args.in_channels,
              "options": args.options}
    if args.preset:
        return [{**common, **p, "threads": t} for p in PRESETS[args.preset] for t in p["threads"]]
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    return [{**common, "model": m, "variants": args.variants, "activation": args.activation,
             "batch": args.batch, "threads": t} for m in args.model.split(",") for t in threads]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet20_v1", help="comma-separated model names")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated, or 'all'")
    ap.add_argument("--activation", default="relu", choices=["relu", "gelu"],
                    help="every variant's activation (the RAA form follows it)")
    ap.add_argument("--batch", type=int, default=128, help="images per step (default 128)")
    ap.add_argument("--input-size", type=int, default=32, help="image side in pixels (default 32)")
    ap.add_argument("--in-channels", type=int, default=3, help="image channels (default 3)")
    ap.add_argument("--options", type=json.loads, default={}, help='model options as JSON: \'{"width": 256}\'')
    ap.add_argument("--reps", type=int, default=7, help="timed steps per variant (default 7)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time, steadier on a shared machine "
                         "(benchmarks/machine.py)")
    ap.add_argument("--threads", help="comma-separated thread counts, one section each (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the steps run")
    ap.add_argument("--amp", choices=["bf16"], help="autocast the forward pass to bfloat16")
    ap.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="a prepared set of sections (overrides "
                    "--model, --variants, --activation, --threads, --batch)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory child")
    ap.add_argument("--json", type=Path, help="write every section and the machine to this file")
    ap.add_argument("--markdown", action="store_true", help="print the README table (Markdown)")
    ap.add_argument("--from-json", type=Path, help="print the tables of an earlier --json run; measure nothing")
    ap.add_argument("--isa", choices=sorted(ISA_ENV), help="run as on a CPU without AVX-512: our kernels, "
                    "oneDNN, ATen and MKL limited to AVX2 (an AVX-512 machine standing in for an AVX2 one)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    reexec_for_isa(args.isa)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device")

    if args.memory_child:
        sec = sections_from_args(args)[0]
        torch.set_num_threads(sec["threads"])
        return memory_child(sec, args.variants.split(","))

    if args.from_json:
        doc = json.loads(args.from_json.read_text())
        if doc.get("schema") != SCHEMA:
            sys.exit(f"error: {args.from_json} is not a {SCHEMA} file")
    else:
        if args.clock == "cpu" and args.device == "cuda":
            sys.exit("error: --clock cpu measures the CPU's work; a CUDA step needs --clock wall")
        sections = [run_section(sec, args.reps, args.memory, args.clock) for sec in sections_from_args(args)]
        gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
        kernels = kernel_paths()
        meta = {"machine": describe(args.isa, kernels, gpu), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(), "isa_limit": args.isa,
                "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(), "kernels": kernels}
        doc = {"schema": SCHEMA, "meta": meta, "sections": sections}
    show = print_terminal if sys.stdout.isatty() else print_plain
    if args.markdown:
        print(markdown(doc))
    else:
        print(textwrap.fill(f"machine: {doc['meta']['machine']}", 80, break_on_hyphens=False))
        for sec in doc["sections"]:
            show(sec)
    if not args.markdown:
        for line in step_figures(doc):
            print(line)
    if args.json and not args.from_json:
        from biasbench.fsutil import atomic_write_json
        atomic_write_json(args.json, doc)


if __name__ == "__main__":
    main()
