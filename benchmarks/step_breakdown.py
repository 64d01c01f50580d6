r"""Where a variant's training step spends its extra time: per-operator CPU time, baseline against variant.

    python benchmarks/step_breakdown.py [--timer cpu|profiler] [--variants dac,raa] [--steps 7] [--warm 2]
        [--rows 14] [--json PATH] [--quick]

Issue 22's step ratios measured op by op, on ONE thread, so that a loaded machine distorts them
little (wall-clock step ratios on a shared machine are noise). Sections (variant_step.py's
conventions: its model builder, the trainer's loss, SGD with momentum 0.9, random CIFAR batch):

  resnet20_v1 relu, baseline vs dac       batch 128  (issue 22: DAC step <= 1.10x, floor 1.065x)
  resnet20_v1 gelu, baseline vs raa       batch 128  (issue 22: RAA step <= 1.03x, floor 1.00x)
  vit_tiny_patch4 gelu, baseline vs raa   batch 64   (variant_step.py's issue22 preset)
  the two RAA sections with dnrt (RAA + ARR) instead, with `--variants dnrt` (or dac,raa,dnrt)

Each section runs `--warm` untimed steps of each variant, then `--steps` timed steps, the two
variants alternating. Each step marks its phases (forward with the loss, backward, optimizer).
Timers: `cpu` (default) puts a TorchDispatchMode around the step that reads the thread's CPU
clock around every ATen and custom op (our kernels are torch.ops), so time the scheduler gives
to other processes is not counted; what runs outside ops (Python, autograd's engine, the
timer's own bookkeeping) is a row per phase. `profiler`: torch.profiler's self time per op
(every ATen op, our ops and the autograd.Function nodes), which is elapsed time on the thread,
so preemption inflates it; the first profiled round is dropped (the profiler's start-up). Both
print the on-CPU share (thread CPU time / elapsed) per variant. A table row is (phase, op): the
median over the timed steps of its time per step, baseline and variant, and its share of the
difference of the step totals (each the sum of its rows; the median step's time is in the JSON).

Below each table the bound: the variant's kernel ops against the baseline ops they replace
(DAC: conv + ReLU, forward and backward; RAA: GELU), as GFLOP/s (FLOPs from biasbench.count,
forward + backward = 3x the forward count) or ns per activation element; the step ratio if the
kernel ops ran at the replaced ops' speed, if they took the replaced ops' time, and if they ran
at this core's measured ceiling (GEMM GFLOP/s for DAC; copy bandwidth for RAA's minimum 20 bytes
per element); the same from each op's fastest step. JSON (`--json`; default
benchmarks/results/step_breakdown.json, step_breakdown_quick.json with --quick): the machine
(benchmarks/machine.py), ceilings, load averages, both bounds and every row. `--quick`: batch 16,
one warm and two timed steps; a check that the script runs, not a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import cpu_name, describe, kernel_paths, loadavg  # noqa: E402
from variant_step import build, loss_terms  # noqa: E402

from biasbench.count import complexity  # noqa: E402
from biasbench.fsutil import atomic_write_json  # noqa: E402
from biasbench.losses import Criterion  # noqa: E402

SCHEMA = "biasbench-step-breakdown/1"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "step_breakdown.json"
QUICK_JSON = REPO / "benchmarks" / "results" / "step_breakdown_quick.json"  # a check run's, apart
MIN_BYTES = 4 * (2 + 3)  # float32 per activation element: forward reads x, writes y; backward x, dy -> dx
ENGINE = "autograd::engine::evaluate_function: "
# Each section's kernel ops (the variant's own) and the baseline ops they stand in for; an op
# name matches when it starts with one of the prefixes. The replaced ops' time is the baseline's
# minus what the variant still spends in them (the stem conv stays a plain conv in DAC ResNet20).
SECTIONS = [
    {"model": "resnet20_v1", "activation": "relu", "variant": "dac", "batch": 128,
     "kernel": ("biasbench_dac", "_DACConvCPU", ENGINE + "_DAC",  # DACLinear's node is C++ (DACLinearNode)
                ENGINE + "torch::autograd::CppNode<(anonymous namespace)::DACLinearNode>"),
     "replaced": ("aten::conv", "aten::_convolution", "aten::mkldnn_convolution", "aten::relu", "aten::clamp_min",
                  "aten::threshold_backward", "aten::addmm", "aten::mm", ENGINE + "ConvolutionBackward",
                  ENGINE + "ReluBackward", ENGINE + "AddmmBackward")},
    {"model": "resnet20_v1", "activation": "gelu", "variant": "raa", "batch": 128,
     "kernel": ("biasbench_raa", "_RAACPU", ENGINE + "_RAACPU"),
     "replaced": ("aten::gelu", "aten::gelu_backward", ENGINE + "GeluBackward")},
    {"model": "vit_tiny_patch4", "activation": "gelu", "variant": "raa", "batch": 64,
     "kernel": ("biasbench_raa", "_RAACPU", ENGINE + "_RAACPU"),
     "replaced": ("aten::gelu", "aten::gelu_backward", ENGINE + "GeluBackward")},
]
# DNRT (RAA + ARR's loss term over the stages), on request (`--variants dnrt`): README's 1.08x row.
SECTIONS += [{**sec, "variant": "dnrt"} for sec in SECTIONS if sec["variant"] == "raa"]
DEFAULT_VARIANTS = "dac,raa"


def make_step(sec: dict, variant: str):
    """variant_step.make_step on the CPU in float32; the step marks its phases with `phase(name)`."""
    torch.manual_seed(0)
    spec = {**sec, "input_size": 32}
    model = build(spec, variant)
    criterion = Criterion("classification", 0.0, loss_terms(model))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(sec["batch"], 3, 32, 32), torch.randint(0, 10, (sec["batch"],))

    def step(phase: Callable[[str], ContextManager]) -> None:
        with phase("optimizer"):
            opt.zero_grad(set_to_none=True)
        with phase("forward"):
            loss = criterion(model(x), y)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            opt.step()
    return step


def flops_per_image(sec: dict, variant: str) -> dict[str, int]:
    """biasbench.count's forward FLOPs per image, by operator."""
    model = build({**sec, "input_size": 32}, variant)
    return dict(complexity(model, (3, 32, 32))["flops_by_operator"])


def op_name(name: str) -> str:
    return "engine: " + name[len(ENGINE):] if name.startswith(ENGINE) else name


def step_tables(events, roots: dict[str, str]) -> dict[str, dict[tuple[str, str], float]]:
    """Self CPU microseconds per (phase, op name) for each step block named in `roots` (block
    name -> step id), from the profiler's event tree."""
    per_step: dict[str, dict[tuple[str, str], float]] = defaultdict(lambda: defaultdict(float))
    for ev in events:
        phase, step, node = None, None, ev
        while node is not None:
            if phase is None and node.name.startswith("phase."):
                phase = node.name[len("phase."):]
            if node.name in roots:
                step = roots[node.name]
                break
            node = node.cpu_parent
        if step is None or ev.name in roots:
            continue
        key = (phase or "step", "(outside ops) " + phase if ev.name.startswith("phase.") else op_name(ev.name))
        per_step[step][key] += ev.self_cpu_time_total
    return per_step


def by_profiler(fns: dict, steps: int) -> tuple[dict[str, list[dict]], dict[str, float], int]:
    """Per-step tables from torch.profiler (self time per op, elapsed on the thread), the on-CPU
    share per variant and the baseline's GELU elements per step."""
    roots, clock = [], defaultdict(list)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(steps + 1):  # round 0 takes the profiler's start-up: dropped below
            for n, fn in fns.items():
                block = f"step.{n}.{i}"
                roots.append(block)
                wall, cpu = time.perf_counter(), time.thread_time()
                with record_function(block):
                    fn(lambda p: record_function("phase." + p))
                if i:
                    clock[n].append((time.thread_time() - cpu) / (time.perf_counter() - wall))
    per_step = step_tables(prof.events(), {b: b for b in roots if not b.endswith(".0")})
    tables = {n: [t for b, t in per_step.items() if b.startswith(f"step.{n}.")] for n in fns}
    first = [ev for ev in prof.events() if ev.name == "aten::gelu" and under(ev, "step.baseline.1")]
    gelu_elements = sum(math.prod(ev.input_shapes[0]) for ev in first)
    return tables, {n: statistics.median(v) for n, v in clock.items()}, gelu_elements


class ThreadCpuPerOp(TorchDispatchMode):
    """Thread CPU time (CLOCK_THREAD_CPUTIME_ID) of every ATen and custom op the step dispatches,
    in microseconds per (phase, op), and each phase's total: time the scheduler gives to other
    processes is not counted, unlike the profiler's elapsed times."""

    def __init__(self) -> None:
        super().__init__()
        self.phase, self.us, self.phase_us, self.gelu_elements = "step", defaultdict(float), defaultdict(float), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name == "aten::gelu":
            self.gelu_elements += args[0].numel()
        start = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        self.us[(self.phase, name)] += (time.thread_time_ns() - start) / 1e3
        return out

    @contextlib.contextmanager
    def mark(self, phase: str):
        self.phase, start = phase, time.thread_time_ns()
        yield
        self.phase_us[phase] += (time.thread_time_ns() - start) / 1e3

    def table(self) -> dict[tuple[str, str], float]:
        """The ops, and per phase what ran outside them (Python, autograd's engine, this timer)."""
        out = dict(self.us)
        for phase, total in self.phase_us.items():
            out[(phase, "(outside ops) " + phase)] = total - sum(t for (p, _), t in self.us.items() if p == phase)
        return out


def by_thread_cpu(fns: dict, steps: int) -> tuple[dict[str, list[dict]], dict[str, float], int]:
    """by_profiler's results from ThreadCpuPerOp (on-CPU share per step measured alike)."""
    tables, clock, gelu_elements = defaultdict(list), defaultdict(list), 0
    for _ in range(steps):
        for n, fn in fns.items():
            mode = ThreadCpuPerOp()
            wall, cpu = time.perf_counter(), time.thread_time()
            with mode:
                fn(mode.mark)
            clock[n].append((time.thread_time() - cpu) / (time.perf_counter() - wall))
            tables[n].append(mode.table())
            gelu_elements = mode.gelu_elements if n == "baseline" else gelu_elements
    return tables, {n: statistics.median(v) for n, v in clock.items()}, gelu_elements


TIMERS = {"profiler": by_profiler, "cpu": by_thread_cpu}


def profile_section(sec: dict, warm: int, steps: int, timer: str) -> dict:
    """Interleaved timed steps of baseline and variant; medians and minima per (phase, op), in ms."""
    names = ("baseline", sec["variant"])
    fns = {n: make_step(sec, n) for n in names}
    for _ in range(warm):
        for fn in fns.values():
            fn(lambda p: contextlib.nullcontext())
    tables, on_cpu, gelu_elements = TIMERS[timer](fns, steps)
    ops, lows, totals, steps_ms = {}, {}, {}, {}
    for n in names:
        mine = tables[n]
        keys = set().union(*mine)
        ops[n] = {k: statistics.median(t.get(k, 0.0) for t in mine) / 1e3 for k in keys}
        lows[n] = {k: min(t.get(k, 0.0) for t in mine) / 1e3 for k in keys}
        # The sum of the rows, so that rows, shares and bounds add up (the median step: step_ms).
        totals[n] = sum(ops[n].values())
        steps_ms[n] = statistics.median(sum(t.values()) for t in mine) / 1e3
    return {"ops": ops, "min_ops": lows, "totals": totals, "step_ms": steps_ms, "on_cpu": on_cpu,
            "gelu_elements": gelu_elements}


def under(ev, block: str) -> bool:
    node = ev.cpu_parent
    while node is not None and node.name != block:
        node = node.cpu_parent
    return node is not None


def matching(ops: dict[tuple[str, str], float], prefixes: tuple[str, ...]) -> float:
    return sum(ms for (_, name), ms in ops.items()
               if name.startswith(prefixes) or name.startswith(tuple(op_name(p) for p in prefixes)))


def ceilings(reps: int = 5) -> dict[str, float]:
    """This core's measured ceilings, from the fastest of `reps` runs in thread CPU time: float32
    GEMM (1024^3 through ATen / MKL, 2 FLOPs per multiply-add) and copy bandwidth (64 MiB read
    and written once)."""
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    src, dst = torch.randn(16 * 2**20), torch.empty(16 * 2**20)

    def fastest(fn) -> float:
        fn()
        best = math.inf
        for _ in range(reps):
            start = time.thread_time_ns()
            fn()
            best = min(best, time.thread_time_ns() - start)
        return best / 1e9
    return {"gemm_gflops": 2 * 1024**3 / fastest(lambda: torch.mm(a, b)) / 1e9,
            "copy_gbytes_per_s": 2 * src.numel() * 4 / fastest(lambda: dst.copy_(src)) / 1e9}


def work_rates(sec: dict, res: dict, kernel_ms: float, replaced_ms: float) -> dict:
    """The kernel ops' and the replaced ops' work per ms, and the replaced ops' time scaled to the
    kernel's work. RAA: per activation element (the same elements pass GELU and RAA); DAC: per
    FLOP from biasbench.count, forward + backward = 3x the forward count of the layers the
    variant moves into its kernel."""
    elements = res["gelu_elements"]
    if elements:
        return {"elements": elements, "kernel_ns_per_element": kernel_ms * 1e6 / elements,
                "replaced_ns_per_element": replaced_ms * 1e6 / elements,
                "kernel_gbytes_per_s": MIN_BYTES * elements / kernel_ms / 1e6,
                "replaced_gbytes_per_s": MIN_BYTES * elements / replaced_ms / 1e6,
                "replaced_ms_scaled": replaced_ms}
    fb, fv = flops_per_image(sec, "baseline"), flops_per_image(sec, sec["variant"])
    replaced = 3 * sum(fb[k] - fv.get(k, 0) for k in fb if fb[k] > fv.get(k, 0)) * sec["batch"] / 1e9
    kernel = 3 * sum(fv[k] - fb.get(k, 0) for k in fv if fv[k] > fb.get(k, 0)) * sec["batch"] / 1e9
    return {"elements": 0, "kernel_gflop": kernel, "replaced_gflop": replaced,
            "kernel_gflops": kernel / kernel_ms * 1e3, "replaced_gflops": replaced / replaced_ms * 1e3,
            "replaced_ms_scaled": replaced_ms * kernel / replaced}


def bound(sec: dict, res: dict, ceiling: dict[str, float]) -> dict:
    """The kernel ops against the baseline ops they replace, and the step ratio if the kernel ops
    ran at the replaced ops' speed (per FLOP or per element) or took the replaced ops' time."""
    base, var = res["ops"]["baseline"], res["ops"][sec["variant"]]
    kernel_ms = matching(var, sec["kernel"])
    replaced_ms = matching(base, sec["replaced"]) - matching(var, sec["replaced"])
    rates = work_rates(sec, res, kernel_ms, replaced_ms)
    other = res["totals"][sec["variant"]] - kernel_ms
    total_b = res["totals"]["baseline"]
    flops = sum(flops_per_image(sec, sec["variant"]).values()) / sum(flops_per_image(sec, "baseline").values())
    # At the ceiling: the kernel's FLOPs at the GEMM rate (DAC), or its minimum bytes at the copy
    # bandwidth (RAA: the activation is memory-bound at best).
    at_ceiling = (MIN_BYTES * rates["elements"] / ceiling["copy_gbytes_per_s"] / 1e6 if rates["elements"]
                  else rates["kernel_gflop"] / ceiling["gemm_gflops"] * 1e3)
    return {**rates, "kernel_ms": kernel_ms, "replaced_ms": replaced_ms, "flops_ratio": flops,
            "kernel_ms_at_ceiling": at_ceiling, "ratio_kernel_at_ceiling": (other + at_ceiling) / total_b,
            "ratio": res["totals"][sec["variant"]] / total_b,
            "ratio_kernel_at_replaced_speed": (other + rates["replaced_ms_scaled"]) / total_b,
            "ratio_kernel_as_replaced_time": (other + replaced_ms) / total_b}


def rows(sec: dict, res: dict, limit: int) -> list[dict]:
    base, var = res["ops"]["baseline"], res["ops"][sec["variant"]]
    diff = res["totals"][sec["variant"]] - res["totals"]["baseline"]
    low_b, low_v = res["min_ops"]["baseline"], res["min_ops"][sec["variant"]]
    out = [{"phase": k[0], "op": k[1], "baseline_ms": base.get(k, 0.0), "variant_ms": var.get(k, 0.0),
            "share": (var.get(k, 0.0) - base.get(k, 0.0)) / diff if diff else None,
            "baseline_min_ms": low_b.get(k, 0.0), "variant_min_ms": low_v.get(k, 0.0)}
           for k in set(base) | set(var)]
    out.sort(key=lambda r: -abs(r["variant_ms"] - r["baseline_ms"]))
    return out if limit <= 0 else out[:limit]


def print_section(sec: dict, res: dict, b: dict, table: list[dict]) -> None:
    v = sec["variant"]
    tb, tv = res["totals"]["baseline"], res["totals"][v]
    print(f"\n{sec['model']} ({sec['activation']}), batch {sec['batch']}, 1 thread: baseline {tb:.1f} ms, {v} "
          f"{tv:.1f} ms per step in ops and between them ({tv / tb:.3f}x); on-CPU share "
          f"{res['on_cpu']['baseline']:.2f} / {res['on_cpu'][v]:.2f}")
    print(f"{'phase':<10} {'op':<44} {'base ms':>9} {v + ' ms':>9} {'share':>7}")
    for r in table:
        share = f"{r['share'] * 100:6.1f}%" if r["share"] is not None else "    n/a"
        print(f"{r['phase']:<10} {r['op'][:44]:<44} {r['baseline_ms']:9.2f} {r['variant_ms']:9.2f} {share}")
    if b["elements"]:
        print(f"kernel ops {b['kernel_ms']:.1f} ms, {b['kernel_ns_per_element']:.2f} ns per activation "
              f"element ({b['kernel_gbytes_per_s']:.1f} GB/s of the {MIN_BYTES} bytes each needs), replace "
              f"{b['replaced_ms']:.1f} ms, {b['replaced_ns_per_element']:.2f} ns "
              f"({b['replaced_gbytes_per_s']:.1f} GB/s); {b['elements'] / 1e6:.1f} M elements per step; "
              f"FLOPs {b['flops_ratio']:.3f}x")
    else:
        print(f"kernel ops {b['kernel_ms']:.1f} ms ({b['kernel_gflop']:.2f} GFLOP, {b['kernel_gflops']:.1f} "
              f"GFLOP/s) replace {b['replaced_ms']:.1f} ms of baseline ops ({b['replaced_gflop']:.2f} GFLOP, "
              f"{b['replaced_gflops']:.1f} GFLOP/s); FLOPs {b['flops_ratio']:.3f}x")
    per = "element" if b["elements"] else "FLOP"
    print(f"step ratio {b['ratio']:.3f}x; with the kernel ops at the replaced ops' speed per {per} "
          f"{b['ratio_kernel_at_replaced_speed']:.3f}x; taking the replaced ops' time "
          f"{b['ratio_kernel_as_replaced_time']:.3f}x; kernel ops at this core's ceiling "
          f"({b['kernel_ms_at_ceiling']:.1f} ms) {b['ratio_kernel_at_ceiling']:.3f}x")


def run_section(sec: dict, warm: int, steps: int, timer: str, shown: int, ceiling: dict[str, float]) -> dict:
    """Time one section, print its table and bounds; its JSON record."""
    load = loadavg()
    res = profile_section(sec, warm, steps, timer)
    b = bound(sec, res, ceiling)
    # The same from each op's fastest step: a step no other process slowed, as near as measured.
    fastest = {n: sum(t.values()) for n, t in res["min_ops"].items()}
    b_min = bound(sec, {**res, "ops": res["min_ops"], "totals": fastest}, ceiling)
    print_section(sec, res, b, rows(sec, res, shown))
    print(f"from each op's fastest step: step ratio {b_min['ratio']:.3f}x; kernel ops at the replaced ops' "
          f"speed {b_min['ratio_kernel_at_replaced_speed']:.3f}x; taking their time "
          f"{b_min['ratio_kernel_as_replaced_time']:.3f}x")
    return {"model": sec["model"], "activation": sec["activation"], "variant": sec["variant"],
            "batch": sec["batch"], "threads": 1, "steps": steps, "warm": warm, "timer": timer,
            "loadavg_before": load, "loadavg_after": loadavg(), "totals_ms": res["totals"],
            "median_step_ms": res["step_ms"], "on_cpu_share": res["on_cpu"], "bound": b, "bound_min": b_min,
            "rows": rows(sec, res, 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=7, help="timed steps per variant (default 7)")
    ap.add_argument("--warm", type=int, default=2, help="untimed warm-up steps per variant (default 2)")
    ap.add_argument("--rows", type=int, default=14, help="table rows per section, largest difference first "
                    "(0: all; the JSON keeps all)")
    ap.add_argument("--json", type=Path, help=f"default {DEFAULT_JSON.relative_to(REPO)} "
                    f"({QUICK_JSON.relative_to(REPO)} with --quick)")
    ap.add_argument("--timer", choices=sorted(TIMERS), default="cpu",
                    help="profiler: torch.profiler's self time per op (elapsed on the thread); cpu: thread CPU "
                         "time per dispatched op, which time given to other processes does not inflate")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"sections by variant, comma-separated: dac, raa, dnrt (default {DEFAULT_VARIANTS})")
    ap.add_argument("--quick", action="store_true", help="batch 16, 1 warm + 2 timed steps: a check run")
    args = ap.parse_args()
    if args.steps < 1 or args.warm < 0:
        ap.error("--steps must be at least 1 and --warm at least 0")
    torch.set_num_threads(1)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    known = {sec["variant"] for sec in SECTIONS}
    if not wanted or set(wanted) - known:
        ap.error(f"--variants takes {', '.join(sorted(known))}, got {args.variants!r}")
    chosen = [sec for sec in SECTIONS if sec["variant"] in wanted]
    sections = [{**sec, "batch": 16} for sec in chosen] if args.quick else chosen
    steps, warm = (2, 1) if args.quick else (args.steps, args.warm)
    kernels = kernel_paths()
    ceiling = ceilings()
    print(f"machine: {describe(None, kernels)}; load {loadavg()}")
    print(f"ceilings (1 thread, thread CPU time): GEMM {ceiling['gemm_gflops']:.1f} GFLOP/s, copy "
          f"{ceiling['copy_gbytes_per_s']:.1f} GB/s")
    out = []
    for sec in sections:
        out.append(run_section(sec, warm, steps, args.timer, args.rows, ceiling))
    meta = {"machine": describe(None, kernels), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "kernels": kernels, "quick": args.quick, "ceilings": ceiling}
    path = args.json or (QUICK_JSON if args.quick else DEFAULT_JSON)
    atomic_write_json(path, {"schema": SCHEMA, "meta": meta, "sections": out})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
