"""benchmarks/perf_table.py writes the README's issue-22 table from the benchmarks' JSON, and
mnist_epoch.py's ratios and verdicts: both from synthetic measurements with known answers."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REPO


def _benchmark(name: str):
    sys.path.insert(0, str(REPO / "benchmarks"))  # the scripts import their siblings
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def epoch_times(dac_over_base: tuple[float, float], two_over_one: float) -> dict:
    """Seconds per run: baseline 1.0 s at 1 thread; the ratios as given, identical in every run but one."""
    base1 = [1.0, 1.1, 0.9]
    base2 = [b * 0.6 for b in base1]
    dac1 = [b * dac_over_base[0] for b in base1]
    dac2 = [d * two_over_one for d in dac1]
    dac2[1] = base2[1] * dac_over_base[1]  # run 2: DAC / baseline at 2 threads as given
    return {"1t": {"baseline": base1, "dac": dac1}, "2t": {"baseline": base2, "dac": dac2}}


def test_epoch_ratios_are_per_run_and_targets_hold_in_every_run():
    bench = _benchmark("mnist_epoch")
    times = epoch_times((1.1, 1.3), 0.7)
    r = bench.ratios(times)
    assert r["dac/baseline 1t"] == pytest.approx([1.1] * 3)
    assert r["baseline 2t/1t"] == pytest.approx([0.6] * 3)
    assert r["dac/baseline 2t"][1] == pytest.approx(1.3)  # the one run that misses
    assert r["dac/baseline 2t"][0] == pytest.approx(1.1 * 0.7 / 0.6)
    met = bench.verdicts(r)
    assert r["dac 2t/1t"] == pytest.approx([0.7, 0.6 * 1.3 / 1.1, 0.7])
    assert met == {"dac/baseline 1t <= 1.15": True, "dac/baseline 2t <= 1.15": False,  # 1.28, 1.3, 1.28
                   "dac 2t/1t <= 0.75": True}
    slow_run = bench.ratios(epoch_times((1.1, 1.3), 0.7) | {"2t": {"baseline": [0.6, 0.66, 0.54],
                                                                  "dac": [0.77, 0.77, 0.9]}})
    assert bench.verdicts(slow_run)["dac 2t/1t <= 0.75"] is False  # run 3: 0.9 / 0.99 = 0.91
    fine = bench.verdicts(bench.ratios({"1t": {"baseline": [1.0, 1.0], "dac": [1.1, 1.1]},
                                        "2t": {"baseline": [0.7, 0.7], "dac": [0.77, 0.8]}}))
    assert all(fine.values())


def test_table_rows_from_the_json_and_missing_ones_say_so(tmp_path):
    table = _benchmark("perf_table")
    docs = {k: None for k in table.FILES}
    docs["layers"] = {"meta": {"dense_batch": 128, "machine": "Test CPU (2 cores)"}, "results": [
        {"case": "dense 141x141 b128", "threads": 1, "time_ratio": 1.5},
        {"case": "dense 250x250 b128", "threads": 1, "time_ratio": 1.7},
        {"case": "dense 784x256 b128", "threads": 1, "time_ratio": 1.3},
        {"case": "dense 784x256 b128", "threads": 2, "time_ratio": 1.1}]}
    docs["cli"] = {"median_s": {"biasbench --version": 0.2, "biasbench list": 0.5}}
    text = table.markdown(docs)
    lines = text.splitlines()
    assert lines[0].startswith("Measured on Test CPU (2 cores)")
    sgemm = next(line for line in lines if "SGEMM widths" in line)
    assert "| 1.50-1.70x | <= 1.6x | **no** |" in sgemm  # 250x250 misses; 784x256 at 1 thread is not an SGEMM width
    assert next(line for line in lines if "784x256" in line).endswith("| 1.10x | <= 1.15x | yes |")
    assert "| **no** |" in next(line for line in lines if "--version" in line)  # list took 0.5 s
    epoch = next(line for line in lines if "DAC / baseline (" in line or "DAC / baseline, 1 and 2" in line)
    assert "not measured" in epoch and epoch.endswith("| - |")


def test_roofline_row_gives_each_shapes_floor_and_the_layers_share_of_it():
    """op_mix_roofline.json's rows: floor = the DAC kernels at the mix's peak over the plain
    step; the share is that least time over the DAC layer's measured step; a shape that is no
    SGEMM width and not 784x256 is left out; no verdict (a bound is no target)."""
    table = _benchmark("perf_table")
    doc = {"rows": [{"shape": [128, 141, 141], "plain_ms": 0.3, "dac_ms": 0.45, "dac_peak_ms": 0.18,
                     "floor_ratio": 0.6},
                    {"shape": [128, 784, 256], "plain_ms": 1.8, "dac_ms": 2.9, "dac_peak_ms": 1.8,
                     "floor_ratio": 1.0},
                    {"shape": [128, 256, 256], "plain_ms": 0.6, "dac_ms": 1.0, "dac_peak_ms": 0.5,
                     "floor_ratio": 0.83}]}
    ((figure, measured, _, met),) = table.roofline_rows(doc)
    assert "instruction mix" in figure and met is None
    assert "141x141 0.60x (the layer now at 40% of that rate)" in measured  # 0.18 / 0.45
    assert "784x256 1.00x (the layer now at 62% of that rate)" in measured  # 1.8 / 2.9
    assert "256x256" not in measured
    assert table.roofline_rows(None)[0][1] == "not measured"


def test_the_readme_block_is_replaced_between_its_markers_only(tmp_path):
    table = _benchmark("perf_table")
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{table.BEGIN}\nold table\n{table.END}\nafter\n")
    table.replace_block(readme, "| new |")
    assert readme.read_text() == f"before\n{table.BEGIN}\n| new |\n{table.END}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="needs one"):
        table.replace_block(readme, "| new |")
    real = (REPO / "README.md").read_text()
    assert real.count(table.BEGIN) == 1 and real.count(table.END) == 1  # the README carries the markers
