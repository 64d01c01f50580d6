"""Issue 22's performance table, from the benchmarks' JSON outputs, into README.md.

    python benchmarks/perf_table.py [--results benchmarks/results] [--readme README.md] [--print-only]

Reads what `python benchmarks/perf_all.py` writes under --results (each file is one benchmark's
own --json output), and replaces the block between the two marker comments in README.md with the
table: one row per figure of issue 22, its measured value, target and whether it is met. A figure
whose benchmark did not run is written as "not measured", never left from an earlier run.
dac_layers.py and variant_step.py print their rows of it with the same functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BEGIN = "<!-- perf table (issue 22): regenerate with `python benchmarks/perf_all.py` -->"
END = "<!-- end of perf table -->"
FILES = {"epoch": "mnist_epoch.json", "layers": "dac_layers_issue22.json", "steps": "variant_step_issue22.json",
         "trainer": "trainer_overhead_real.json", "cli": "cli_startup.json",
         "roofline": "op_mix_roofline.json"}
SGEMM = ("141x141", "200x200", "250x250")

Row = tuple[str, str, str, bool | None]  # figure, measured, target, met (None: not measured)


def span(values: list[float], unit: str = "x") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}{unit}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}{unit}"


# -- each benchmark's rows ------------------------------------------------------------------------

def dense_rows(doc: dict[str, Any] | None) -> list[Row]:
    """dac_layers.py --preset issue22: the dense layers' DAC / plain step, batch 128."""
    if doc is None:
        return [("dense DAC / plain layer step, SGEMM widths, 1 thread", "not measured", "<= 1.6x", None),
                ("dense DAC / plain layer step, 784 inputs, 2 threads", "not measured", "<= 1.15x", None)]
    res = doc["results"]
    sgemm = [r["time_ratio"] for r in res if r.get("threads") == 1 and r["case"].split()[1] in SGEMM]
    wide = [r["time_ratio"] for r in res if r.get("threads") == 2 and r["case"].split()[1] == "784x256"]
    batch = doc["meta"]["dense_batch"]
    out = []
    for figure, values, limit in ((f"dense DAC / plain layer step, SGEMM widths, batch {batch}, 1 thread", sgemm, 1.6),
                                  ("dense DAC / plain layer step, 784x256, batch 128, 2 threads", wide, 1.15)):
        out.append((figure, span(values) if values else "not measured", f"<= {limit}x",
                    max(values) <= limit if values else None))
    return out


def roofline_rows(doc: dict[str, Any] | None) -> list[Row]:
    """op_mix_roofline.py: the dense DAC kernels at this core's peak for their instruction mix,
    over the plain layer's measured step (a bound, not a time)."""
    found = {"x".join(map(str, r["shape"][1:])): r for r in (doc or {}).get("rows", [])}
    measured = ", ".join(f"{shape} {r['floor_ratio']:.2f}x (the layer now at "
                         f"{r['dac_peak_ms'] / r['dac_ms']:.0%} of that rate)"
                         for shape, r in found.items() if shape in (*SGEMM, "784x256"))
    return [("dense DAC kernels at this core's peak for their instruction mix / plain layer step, 1 thread "
             "(bound, not time)", measured or "not measured", "below the targets above leaves room", None)]


def step_rows(doc: dict[str, Any] | None) -> list[Row]:
    """variant_step.py --preset issue22: ResNet20 v1 DAC / baseline; RAA / GELU baseline."""
    def ratios(model: str, act: str, variant: str) -> dict[int, float]:
        return {s["threads"]: r["time_ratio"] for s in (doc or {}).get("sections", [])
                if s["model"] == model and s["activation"] == act for r in s["results"] if r["variant"] == variant}

    out = []
    for figure, model, act, variant, limit in (
            ("ResNet20 v1 DAC / baseline step", "resnet20_v1", "relu", "dac", 1.10),
            ("ResNet20 v1 RAA / GELU baseline step", "resnet20_v1", "gelu", "raa", 1.03),
            ("ViT-Tiny RAA / GELU baseline step", "vit_tiny_patch4", "gelu", "raa", 1.03),
            ("MNIST MLP DAC / baseline step (DAC hidden 181)", "mlp", "relu", "dac", 1.15)):
        found = ratios(model, act, variant)
        measured = ", ".join(f"{v:.2f}x ({t} thread{'s' if t > 1 else ''})" for t, v in sorted(found.items()))
        out.append((figure, measured or "not measured", f"<= {limit}x",
                    max(found.values()) <= limit if found else None))
    return out


def epoch_rows(doc: dict[str, Any] | None) -> list[Row]:
    """mnist_epoch.py: DAC / baseline epoch time at 1 and 2 threads; 2 / 1 threads per variant."""
    if doc is None:
        return [("real MNIST MLP epoch: DAC / baseline, 1 and 2 threads", "not measured", "<= 1.15x", None),
                ("real MNIST MLP epoch: 2 threads / 1 thread (DAC)", "not measured", "<= 0.75", None)]
    r = doc["ratios"]
    runs = f"{doc['runs']} runs" + (", --quick" if doc.get("quick") else "")
    both = r["dac/baseline 1t"] + r["dac/baseline 2t"]
    return [
        (f"real MNIST MLP epoch: DAC / baseline ({runs})",
         f"1 thread {span(r['dac/baseline 1t'])}, 2 threads {span(r['dac/baseline 2t'])}", "<= 1.15x every run",
         max(both) <= 1.15),
        (f"real MNIST MLP epoch: 2 threads / 1 thread ({runs})",
         f"DAC {span(r['dac 2t/1t'], '')} (baseline {span(r['baseline 2t/1t'], '')})", "<= 0.75 every run (DAC)",
         max(r["dac 2t/1t"]) <= 0.75),
    ]


def trainer_rows(doc: dict[str, Any] | None) -> list[Row]:
    """trainer_overhead.py --cases mlp/mnist cnn/fashion: trainer / bare loop per epoch."""
    found = {row["case"]: row["ratio_wall"] for row in (doc or {}).get("rows", [])}
    measured = ", ".join(f"{case} {v:.2f}x" for case, v in found.items())
    return [("trainer / bare PyTorch loop, real MNIST MLP and Fashion-MNIST CNN", measured or "not measured",
             "<= 1.05x", max(found.values()) <= 1.05 if found else None)]


def cli_rows(doc: dict[str, Any] | None) -> list[Row]:
    """perf_all.py's start-up timing: median wall seconds of fresh processes."""
    found = (doc or {}).get("median_s", {})
    measured = ", ".join(f"`{cmd}` {s:.2f} s" for cmd, s in found.items())
    return [("`biasbench --version`, `--help`, `list` (warm disk, cached list)", measured or "not measured",
             "< 0.4 s", max(found.values()) < 0.4 if found else None)]


def dense_figures(doc: dict[str, Any]) -> list[str]:
    """dac_layers.py's closing lines: its rows of issue 22's table."""
    return [f"issue 22: {figure}: {measured} (target {target}{verdict(met)})"
            for figure, measured, target, met in dense_rows(doc) if met is not None]


def step_figures(doc: dict[str, Any]) -> list[str]:
    """variant_step.py's closing lines: its rows of issue 22's table."""
    return [f"issue 22: {figure}: {measured} (target {target}{verdict(met)})"
            for figure, measured, target, met in step_rows(doc) if met is not None]


def verdict(met: bool | None) -> str:
    return "" if met is None else (", met" if met else ", missed")


# -- the README block -------------------------------------------------------------------------------

def load(results: Path) -> dict[str, dict[str, Any] | None]:
    docs: dict[str, dict[str, Any] | None] = {}
    for key, name in FILES.items():
        path = results / name
        docs[key] = json.loads(path.read_text()) if path.is_file() else None
    return docs


def markdown(docs: dict[str, dict[str, Any] | None]) -> str:
    rows = (epoch_rows(docs["epoch"]) + dense_rows(docs["layers"])
            + roofline_rows(docs["roofline"])
            + step_rows(docs["steps"]) + trainer_rows(docs["trainer"]) + cli_rows(docs["cli"]))
    machines = sorted({m for m in (_machine(d) for d in docs.values() if d) if m})
    loads = sorted(float(d["loadavg_before"].split()[0]) for d in docs.values() if d and d.get("loadavg_before"))
    head = (f"Measured on {'; '.join(machines) or 'unknown'}, wall clock"
            + (f", load average {loads[0]:.2f}-{loads[-1]:.2f} at the benchmarks' starts" if loads else "")
            + ". Ratios are measured side by side in one run (interleaved).")
    lines = [head, "", "| figure | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {f} | {m} | {t} | {'-' if ok is None else ('yes' if ok else '**no**')} |" for f, m, t, ok in rows]
    return "\n".join(lines)


def _machine(doc: dict[str, Any]) -> str | None:
    return doc.get("machine") or doc.get("meta", {}).get("machine")


def replace_block(readme: Path, block: str) -> None:
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        sys.exit(f"error: {readme} needs one `{BEGIN}` line and one `{END}` line after it")
    before, rest = text.split(BEGIN)
    after = rest.split(END, 1)[1]
    readme.write_text(f"{before}{BEGIN}\n{block}\n{END}{after}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="where perf_all.py wrote the JSON files")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    ap.add_argument("--print-only", action="store_true", help="print the table; leave README.md alone")
    args = ap.parse_args()
    block = markdown(load(args.results))
    print(block)
    if not args.print_only:
        replace_block(args.readme, block)
        print(f"wrote the table into {args.readme}")


if __name__ == "__main__":
    main()
