"""How long loading a recipe takes: every shipped recipe, plain and with --smoke.

    .venv/bin/python benchmarks/recipe_load.py [--repeats 5] [--json out.json]

Loads every recipe under `recipes/` (gate files excepted) with `load_recipe` (read the YAML
chain, merge `extends`, apply `--smoke`, convert to the typed recipe, validate), and, side by
side in the same run, only parses the same files with the same YAML loader: the floor that no
validation can go below. The target is under 5 ms per load (issue 13 point 23: it was 142 ms,
when type hints were resolved for every field, once per smoke key). The first load of a process
imports torch (train.trainable is checked by biasbench.bias_only); it is timed separately.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from biasbench.recipe import load_raw, load_recipe, parse_yaml  # noqa: E402

TARGET_MS = 5.0


def shipped_recipes() -> list[Path]:
    return sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "gates" not in p.parts)


def chain(path: Path) -> list[Path]:
    """The file and every file it extends."""
    files = [path]
    while True:
        base = parse_yaml(files[-1].read_text()).get("extends")
        if base is None:
            return files
        files.append(files[-1].parent / base)


def time_per_item(fn, items, repeats: int) -> list[float]:
    """Milliseconds per item, best of `repeats` passes over all items."""
    best = [float("inf")] * len(items)
    for _ in range(repeats):
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            fn(item)
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e3)
    return best


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write the timings as JSON here")
    args = ap.parse_args()
    recipes = shipped_recipes()
    smoked = [p for p in recipes if load_raw(p).get("smoke")]
    t0 = time.perf_counter()
    load_recipe(recipes[0])
    first_ms = (time.perf_counter() - t0) * 1e3
    files = {p: chain(p) for p in recipes}
    rows, out = [], {}
    for label, fn, items in (
        ("parse YAML only (floor)", lambda p: [parse_yaml(f.read_text()) for f in files[p]], recipes),
        ("load_recipe", load_recipe, recipes),
        ("load_recipe --smoke", lambda p: load_recipe(p, smoke=True), smoked),
    ):
        ms = time_per_item(fn, items, args.repeats)
        out[label] = {"n": len(items), "mean_ms": statistics.fmean(ms), "median_ms": statistics.median(ms),
                      "max_ms": max(ms)}
        rows.append([label, len(items), f"{out[label]['mean_ms']:.2f}", f"{out[label]['median_ms']:.2f}",
                     f"{out[label]['max_ms']:.2f}"])
    floor = out["parse YAML only (floor)"]["mean_ms"]
    for row, stats in zip(rows, out.values()):
        row.append(f"{stats['mean_ms'] / floor:.1f}x")
    print(f"{len(recipes)} shipped recipes, best of {args.repeats} loads each, on {cpu_name()}")
    print(tabulate(rows, headers=["what", "files", "mean ms", "median", "max", "vs parse"], tablefmt="github"))
    print(f"first load of the process (imports torch): {first_ms:.0f} ms")
    worst = max(out["load_recipe"]["max_ms"], out["load_recipe --smoke"]["max_ms"])
    print(f"target: every load under {TARGET_MS:g} ms -> {'PASS' if worst < TARGET_MS else 'SLOW'}")
    if args.json:
        args.json.write_text(json.dumps({
            "recipes": len(recipes), "repeats": args.repeats, "timings": out, "first_load_ms": first_ms,
            "target_ms": TARGET_MS, "cpu": cpu_name(), "python": platform.python_version(),
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
